//! The `hop3-agent` binary as an operator starts it. (Also makes `cargo
//! test` build the binary the end-to-end suite drives.)

use std::process::Command;

#[test]
fn help_names_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_hop3-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--controller",
        "--root",
        "--host-id",
        "--stop-cmd",
        "--start-cmd",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn refuses_a_bad_listen_address() {
    let out = Command::new(env!("CARGO_BIN_EXE_hop3-agent"))
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}
