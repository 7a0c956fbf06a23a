//! The `hop3-controller` binary as an operator starts it. (Also makes
//! `cargo test` build the binary the end-to-end suite drives.)

use std::process::Command;

fn controller() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hop3-controller"))
}

#[test]
fn help_names_every_flag_and_its_variable() {
    let out = controller().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--store",
        "--catalog",
        "--local-agent",
        "--root",
        "HOP3_STORE",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn refuses_an_unsupported_catalog_clearly() {
    let store = tempfile::tempdir().unwrap();
    let out = controller()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--catalog",
            "mysql://x/y",
            "--store",
        ])
        .arg(store.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not supported"), "{err}");
}
