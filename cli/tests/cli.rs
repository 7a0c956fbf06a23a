//! The `hop3` binary as a user runs it: help, local validation and an
//! unreachable controller without any server, then every command against a
//! fake controller (a real gRPC server with canned answers), also in secure
//! mode: requiring a bearer token, serving TLS. Building this
//! test also makes `cargo test --workspace` build `hop3` for the end-to-end
//! tests.

mod fake_controller;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use fake_controller::{
    BAD_ID, FakeController, GOOD_ID, NOT_AUTHORIZED, Options, TestCa, UNKNOWN_ID,
};
use serde_json::Value;

/// `hop3 ARGS` with a clean environment for the variables it reads.
fn hop3(args: &[&str]) -> Output {
    hop3_command(args).output().expect("hop3 runs")
}

fn hop3_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hop3"));
    command
        .args(args)
        .env_remove("HOP3_CONTROLLER")
        .env_remove("HOP3_CONFIG")
        .env_remove("HOP3_CLI_CONFIG")
        .env_remove("HOP3_CA_CERT")
        .env_remove("HOP3_TOKEN")
        .stdin(Stdio::null());
    command
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_the_commands_and_the_exit_codes() {
    let o = hop3(&["--help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    for word in [
        "backup:create",
        "backup:list",
        "backup:info",
        "backup:restore",
        "backup:delete",
        "backup:import",
        "agent:list",
        "agent:forget",
        "--controller",
        "--json",
        "Exit codes",
    ] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
    let o = hop3(&["backup", "--help"]);
    assert!(o.status.success());
    for word in ["create", "list", "info", "restore", "delete", "import"] {
        assert!(stdout(&o).contains(word));
    }
    let o = hop3(&["agent", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("list"));
    assert!(stdout(&o).contains("forget"));
    let o = hop3(&["backup:create", "--help"]);
    assert!(stdout(&o).contains("--host <HOST>"), "{}", stdout(&o));
    let o = hop3(&["backup:restore", "--help"]);
    assert!(
        stdout(&o).contains("--target-host <HOST>"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn an_invalid_host_fails_before_contacting_anything() {
    for args in [
        &["backup:create", "my-app", "--host", "../etc"][..],
        &["backup", "restore", GOOD_ID, "--target-host", "a/b"],
    ] {
        let mut all = vec!["--controller", "http://127.0.0.1:1"];
        all.extend_from_slice(args);
        let o = hop3(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with("Error: invalid host id"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn an_invalid_backup_id_fails_before_contacting_anything() {
    // Port 1 would make a connection attempt fail with exit 7: getting the
    // usage exit code and the ID message shows no attempt was made.
    let o = hop3(&[
        "--controller",
        "http://127.0.0.1:1",
        "backup:info",
        "not-an-id",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("Error: invalid backup ID"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn an_invalid_app_name_fails_with_a_json_error() {
    let o = hop3(&["backup", "create", "../etc", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).is_empty());
    let doc: serde_json::Value = serde_json::from_str(&stderr(&o)).expect("JSON on stderr");
    assert_eq!(doc["error"]["code"], "INVALID_ARGUMENT");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid app name")
    );
}

#[test]
fn an_unreachable_controller_exits_7() {
    let o = hop3(&["--controller", "http://127.0.0.1:1", "backup:list"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Cannot reach the controller at http://127.0.0.1:1"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn the_controller_can_come_from_the_environment_or_a_config_file() {
    let o = Command::new(env!("CARGO_BIN_EXE_hop3"))
        .args(["backup", "list", "--json"])
        .env("HOP3_CONTROLLER", "http://127.0.0.1:1")
        .env_remove("HOP3_CONFIG")
        .env_remove("HOP3_CLI_CONFIG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7));
    let doc: serde_json::Value = serde_json::from_str(&stderr(&o)).unwrap();
    assert_eq!(doc["error"]["code"], "UNAVAILABLE");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hop3.toml");
    std::fs::write(&config, "controller = \"http://127.0.0.1:1\"\n").unwrap();
    let o = hop3(&["--config", config.to_str().unwrap(), "backup:list"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("http://127.0.0.1:1"));
}

#[test]
fn delete_without_yes_and_without_a_terminal_is_refused() {
    // Refused before connecting: no controller runs, yet the answer is the
    // confirmation error, not "cannot reach".
    let o = hop3(&[
        "--controller",
        "http://127.0.0.1:1",
        "backup:delete",
        "20251108_143022_a8f3d9",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    let o = hop3(&["backup:list", "--limit", "many"]);
    assert_eq!(o.status.code(), Some(2));
    let o = hop3(&["backup:create"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn typo_tips_name_only_commands_that_exist() {
    // The commands `hop3 --help` lists, in both forms.
    let help = stdout(&hop3(&["--help"]));
    let known: Vec<&str> = help
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
        .collect();
    for typo in ["backup:restor", "app:restart", "backup:lst", "agents:list"] {
        let o = hop3(&[typo]);
        assert_eq!(o.status.code(), Some(2));
        let err = stderr(&o);
        let tip = err.lines().find(|l| l.contains("tip:")).unwrap_or("");
        for name in tip.split('\'').skip(1).step_by(2) {
            assert!(known.contains(&name), "{typo}: tip names {name}: {err}");
        }
    }
    assert!(known.contains(&"backup:restore"), "{help}");
}

// ---- against a fake controller -------------------------------------------

/// `hop3 --controller URL ARGS`.
fn against(fake: &FakeController, args: &[&str]) -> Output {
    let url = fake.url();
    let mut all = vec!["--controller", url.as_str()];
    all.extend_from_slice(args);
    hop3(&all)
}

fn json(o: &Output) -> Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn json_error(o: &Output) -> Value {
    serde_json::from_str(&stderr(o)).unwrap_or_else(|e| panic!("{e}: {}", stderr(o)))
}

#[test]
fn create_prints_the_guide_output_and_progress_on_stderr() {
    let fake = FakeController::start();
    let o = against(&fake, &["backup:create", "my-app"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "Creating backup for app 'my-app'...\n\
             \n\
             Backup created successfully!\n\
             \n\
             Backup ID: {GOOD_ID}\n\
             Location: /var/hop3/backups/apps/my-app/{GOOD_ID}\n\
             Total size: 15.6 MB\n\
             \n\
             To restore this backup:\n  \
             hop3 backup:restore {GOOD_ID}\n"
        )
    );
    let err = stderr(&o);
    assert!(
        err.contains("progress: source 0% (0.0 B / 1000.0 B)\n"),
        "{err}"
    );
    assert!(
        err.contains("progress: source 50% (500.0 B / 1000.0 B)\n"),
        "{err}"
    );
    assert!(
        err.contains("progress: services/postgres_my-database 4.0 KB\n"),
        "{err}"
    );
}

#[test]
fn create_in_space_form_with_json() {
    let fake = FakeController::start();
    let o = against(
        &fake,
        &["backup", "create", "blog", "--no-services", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json(&o);
    assert_eq!(doc["backup_id"], GOOD_ID);
    assert_eq!(doc["app"], "blog");
    assert_eq!(doc["status"], "COMPLETED");
    assert_eq!(doc["total_size"], 16_357_785);
    assert_eq!(doc["services"][0], "postgres:my-database");
    for field in ["host", "created_at", "location"] {
        assert!(doc[field].is_string(), "{field}");
    }
    // A COMPLETED backup has no error: null, never "".
    assert!(doc["error"].is_null(), "{}", doc["error"]);
    fake.received(|r| {
        assert_eq!(r.creates.len(), 1);
        assert!(r.creates[0].no_services);
        assert_eq!(r.creates[0].host, "", "no --host: the controller picks");
    });
}

#[test]
fn create_sends_the_host() {
    let fake = FakeController::start();
    let o = against(&fake, &["backup:create", "my-app", "--host", "web-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = against(&fake, &["backup", "create", "--host", "web-2", "blog"]);
    assert!(o.status.success(), "{}", stderr(&o));
    fake.received(|r| {
        let sent: Vec<_> = r
            .creates
            .iter()
            .map(|c| (c.app.as_str(), c.host.as_str(), c.no_services))
            .collect();
        assert_eq!(sent, [("my-app", "web-1", false), ("blog", "web-2", false)]);
    });
}

#[test]
fn create_failures_map_to_messages_hints_and_exit_codes() {
    let fake = FakeController::start();
    let cases = [
        (
            "ghost",
            3,
            "Error: Application not found: ghost\nHint: Check the application name.",
        ),
        (
            "busy",
            4,
            "Error: Another operation is in progress for app 'busy'",
        ),
        (
            "full",
            5,
            "Error: Insufficient disk space: 2.0 GB needed, 1.0 GB free\nHint: Delete old backups",
        ),
        (
            "cut",
            1,
            "Error: The controller ended the backup without reporting its outcome",
        ),
        (
            "broken",
            1,
            "Error: Backup 20251108_143022_a8f3d9 failed: pg_dump exited with status 1",
        ),
    ];
    for (app, code, message) in cases {
        let o = against(&fake, &["backup:create", app]);
        assert_eq!(o.status.code(), Some(code), "{app}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{app}: {}", stderr(&o));
        assert!(!stdout(&o).contains("successfully"), "{app}");
    }
    let o = against(&fake, &["--json", "backup:create", "ghost"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stdout(&o).is_empty());
    let doc = json_error(&o);
    assert_eq!(doc["error"]["code"], "NOT_FOUND");
    assert_eq!(doc["error"]["message"], "Application not found: ghost");
}

#[test]
fn list_prints_a_table_or_json() {
    let fake = FakeController::start();
    let o = against(&fake, &["backup:list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "BACKUP ID               APP     SIZE     CREATED              STATUS     SERVICES\n\
             {GOOD_ID}  my-app  15.6 MB  2025-11-08 14:30:22  COMPLETED  my-database\n\
             {BAD_ID}  my-app  15.4 MB  2025-11-07 09:30:15  COMPLETED  -\n"
        )
    );
    let o = against(&fake, &["backup:list", "my-app", "--limit", "1"]);
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
    let o = against(&fake, &["backup", "list", "--app", "blog"]);
    assert_eq!(stdout(&o), "No backups found.\n");

    let o = against(&fake, &["backup:list", "--json"]);
    let doc = json(&o);
    let list = doc.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["backup_id"], GOOD_ID);
    assert_eq!(list[1]["services"], Value::Array(vec![]));
}

#[test]
fn info_shows_the_block_and_fails_on_a_bad_checksum() {
    let fake = FakeController::start();
    let o = against(&fake, &["backup:info", GOOD_ID]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with(&format!(
        "Backup Information\n{}\n\nBackup ID: {GOOD_ID}\n",
        "=".repeat(50)
    )));
    assert!(out.contains("  ✓ data.tar.gz\n"), "{out}");
    assert!(out.contains("Services Included: (1)\n  - postgres:my-database (8.2 MB)\n"));
    assert!(out.ends_with("Integrity: ✓ All checksums valid\n"), "{out}");

    let o = against(&fake, &["backup", "info", BAD_ID]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("  ✗ data.tar.gz\n"), "{out}");
    assert!(
        out.contains("Integrity: ✗ Checksum mismatch: data.tar.gz, env.json (missing)\n"),
        "{out}"
    );
    assert!(stderr(&o).starts_with("Error: "), "{}", stderr(&o));

    let o = against(&fake, &["backup:info", BAD_ID, "--json"]);
    assert_eq!(o.status.code(), Some(4));
    let doc = json(&o);
    assert_eq!(doc["all_valid"], false);
    assert_eq!(doc["files"][1]["valid"], false);
    assert!(
        doc["files"][2]["actual"].is_null(),
        "a missing file's digest is null"
    );
    assert_eq!(doc["service_dumps"][0]["type"], "postgres");
    assert_eq!(doc["app_state"]["port"], 8000);
    assert_eq!(json_error(&o)["error"]["code"], "FAILED_PRECONDITION");

    let o = against(&fake, &["backup:info", UNKNOWN_ID]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stderr(&o).lines().collect::<Vec<_>>(),
        [
            format!("Error: Backup not found: {UNKNOWN_ID}").as_str(),
            "Hint: List backups with: hop3 backup:list (or hop3 backup:list APP)"
        ]
    );
}

#[test]
fn restore_prints_the_guide_output() {
    let fake = FakeController::start();
    let o = against(&fake, &["backup:restore", GOOD_ID]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "Restoring backup {GOOD_ID}...\n\
             \n\
             Restore completed successfully!\n\
             \n\
             Application: my-app\n\
             Host: host-1\n\
             Hostname: myapp.example.com\n\
             Port: 8000\n\
             \n\
             my-app was restarted by the host's start command.\n"
        )
    );

    let o = against(
        &fake,
        &[
            "backup",
            "restore",
            GOOD_ID,
            "--target-app",
            "my-app-test",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json(&o);
    assert_eq!(doc["app"], "my-app-test");
    assert_eq!(doc["backup_id"], GOOD_ID);
    assert_eq!(doc["hostname"], "myapp.example.com");
    assert_eq!(doc["port"], 8000);
    assert_eq!(doc["run_state"], "STOPPED");
    assert_eq!(doc["host"], "host-1");

    let o = against(&fake, &["backup:restore", BAD_ID]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("Error: Checksum mismatch: data.tar.gz"));
}

#[test]
fn restore_sends_the_target_host() {
    let fake = FakeController::start();
    let o = against(
        &fake,
        &["backup:restore", GOOD_ID, "--target-host", "web-2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("\nApplication: my-app\nHost: web-2\nHostname: "),
        "{}",
        stdout(&o)
    );
    let o = against(
        &fake,
        &[
            "--json",
            "backup",
            "restore",
            GOOD_ID,
            "--target-app",
            "copy",
            "--target-host",
            "web-3",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json(&o);
    assert_eq!(
        (&doc["app"], &doc["host"]),
        (&"copy".into(), &"web-3".into())
    );
    fake.received(|r| {
        let sent: Vec<_> = r
            .restores
            .iter()
            .map(|q| (q.target_app.as_str(), q.target_host.as_str()))
            .collect();
        assert_eq!(sent, [("", "web-2"), ("copy", "web-3")]);
    });
}

#[test]
fn agent_list_prints_a_table_or_json() {
    let fake = FakeController::start();
    let expected = "\
HOST         ADDRESS                STATUS   LAST SEEN            APPS
web-1        http://10.0.0.5:7411   online   2025-11-08 14:30:22  blog, my-app
db-server-2  http://10.0.0.17:7411  offline  2025-11-07 09:30:15  -
";
    for args in [&["agent:list"][..], &["agent", "list"]] {
        let o = against(&fake, args);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), expected, "{args:?}");
    }

    let o = against(&fake, &["agent:list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        json(&o),
        serde_json::json!([
            {
                "host": "web-1", "address": "http://10.0.0.5:7411", "version": "0.1.0",
                "status": "online", "last_seen": "2025-11-08T14:30:22Z",
                "apps": ["blog", "my-app"]
            },
            {
                "host": "db-server-2", "address": "http://10.0.0.17:7411", "version": "0.0.9",
                "status": "offline", "last_seen": "2025-11-07T10:30:15.123456+01:00",
                "apps": []
            }
        ])
    );
}

#[test]
fn agent_list_without_agents() {
    let fake = FakeController::start_with_agents(Vec::new());
    let o = against(&fake, &["agent", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "No agents registered.\n");
    let o = against(&fake, &["--json", "agent:list"]);
    assert_eq!(json(&o), serde_json::json!([]));
}

#[test]
fn agent_forget_forgets_an_offline_agent_in_both_forms() {
    let fake = FakeController::start();
    for args in [
        &["agent:forget", "db-server-2"][..],
        &["agent", "forget", "db-server-2"],
    ] {
        let o = against(&fake, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(
            stdout(&o),
            "✓ Agent db-server-2 forgotten: it is no longer listed (it registers again if its agent calls in)\n"
        );
        assert_eq!(stderr(&o), "");
    }
    let o = against(&fake, &["agent:forget", "db-server-2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o), serde_json::json!({"forgotten": "db-server-2"}));
    fake.received(|r| {
        let hosts: Vec<_> = r.forgets.iter().map(|f| f.host.as_str()).collect();
        assert_eq!(hosts, ["db-server-2"; 3]);
    });
}

#[test]
fn agent_forget_refuses_an_online_agent_with_exit_4() {
    let fake = FakeController::start();
    let o = against(&fake, &["agent:forget", "web-1"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    let err = stderr(&o);
    assert!(
        err.starts_with("Error: host web-1 is online") && err.contains("stop its agent first"),
        "{err}"
    );
    let o = against(&fake, &["--json", "agent", "forget", "web-1"]);
    assert_eq!(o.status.code(), Some(4));
    let doc = json_error(&o);
    assert_eq!(doc["error"]["code"], "FAILED_PRECONDITION");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stop its agent first"),
        "{doc}"
    );
}

#[test]
fn agent_forget_of_an_unknown_host_exits_3_with_a_hint() {
    let fake = FakeController::start();
    let o = against(&fake, &["agent:forget", "web-9"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "Error: Host not found: web-9 (the controller knows no agent of that host)\n\
         Hint: List the agents the controller knows with: hop3 agent:list\n"
    );
    let o = against(&fake, &["agent:forget", "web-9", "--json"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(json_error(&o)["error"]["code"], "NOT_FOUND");
}

#[test]
fn agent_forget_of_an_invalid_host_fails_before_contacting_anything() {
    let o = hop3(&["--controller", "http://127.0.0.1:1", "agent:forget", "a/b"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("Error: invalid host id"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn import_prints_the_summary() {
    let fake = FakeController::start();
    let o = against(&fake, &["backup:import", "/srv/incoming/old-backup"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "Backup imported successfully!\n\
             \n\
             Backup ID: {GOOD_ID}\n\
             Application: my-app\n\
             Location: /var/hop3/backups/apps/my-app/{GOOD_ID}\n\
             Total size: 15.6 MB\n\
             \n\
             To restore this backup:\n  \
             hop3 backup:restore {GOOD_ID}\n"
        )
    );

    let o = against(&fake, &["--json", "backup", "import", "/srv/incoming/b"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json(&o);
    assert_eq!(doc["backup_id"], GOOD_ID);
    assert_eq!(doc["app"], "my-app");
    assert_eq!(doc["status"], "COMPLETED");
    assert_eq!(doc["total_size"], 16_357_785);
    for field in ["host", "created_at", "location"] {
        assert!(doc[field].is_string(), "{field}");
    }
    // A COMPLETED backup has no error: null, never "".
    assert!(doc["error"].is_null(), "{}", doc["error"]);
    fake.received(|r| {
        let sent: Vec<_> = r.imports.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(sent, ["/srv/incoming/old-backup", "/srv/incoming/b"]);
    });
}

#[test]
fn import_sends_a_relative_directory_made_absolute() {
    let fake = FakeController::start();
    let dir = tempfile::tempdir().unwrap();
    let url = fake.url();
    let o = hop3_command(&["--controller", &url, "backup:import", "incoming/b1"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = dir.path().join("incoming").join("b1");
    fake.received(|r| {
        assert_eq!(r.imports.len(), 1);
        assert_eq!(Path::new(&r.imports[0].path), expected);
    });
}

#[test]
fn import_failures_map_to_messages_hints_and_exit_codes() {
    let fake = FakeController::start();
    let o = against(&fake, &["backup:import", "/srv/missing"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("Error: Backup directory not found: /srv/missing\nHint: "),
        "{}",
        stderr(&o)
    );

    let o = against(&fake, &["backup:import", "/srv/dup"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!("Error: Backup {GOOD_ID} already exists\n")),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());

    let o = against(&fake, &["--json", "backup:import", "/srv/dup"]);
    assert_eq!(o.status.code(), Some(4));
    let doc = json_error(&o);
    assert_eq!(doc["error"]["code"], "ALREADY_EXISTS");
    assert_eq!(
        doc["error"]["message"],
        format!("Backup {GOOD_ID} already exists")
    );

    // An empty path is refused before connecting (port 1 would give exit 7).
    let o = hop3(&["--controller", "http://127.0.0.1:1", "backup:import", ""]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Cannot reach"), "{}", stderr(&o));
}

#[test]
fn delete_with_yes() {
    let fake = FakeController::start();
    let o = against(&fake, &["backup:delete", GOOD_ID, "--yes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "✓ Backup deleted successfully\n");

    let o = against(&fake, &["--json", "backup", "delete", GOOD_ID, "-y"]);
    assert_eq!(json(&o), serde_json::json!({ "deleted": GOOD_ID }));

    let o = against(&fake, &["backup:delete", UNKNOWN_ID, "--yes"]);
    assert_eq!(o.status.code(), Some(3));
}

// ---- secure mode: bearer token and TLS ------------------------------------

const TOKEN: &str = "hop3_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const UNAUTHENTICATED_HINT: &str = "Hint: Create a token with: hop3-controller tokens create NAME, then export HOP3_TOKEN=... (as root on the controller's host, its socket needs none)";

/// `hop3 --controller URL ARGS` with `env` set.
fn against_with(fake: &FakeController, env: &[(&str, &str)], args: &[&str]) -> Output {
    let url = fake.url();
    let mut all = vec!["--controller", url.as_str()];
    all.extend_from_slice(args);
    let mut command = hop3_command(&all);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("hop3 runs")
}

/// Neither output of `o` shows `secret`.
fn assert_hidden(o: &Output, secret: &str) {
    assert!(!stdout(o).contains(secret), "{}", stdout(o));
    assert!(!stderr(o).contains(secret), "{}", stderr(o));
}

fn requiring_token() -> FakeController {
    FakeController::start_with(Options {
        token: Some(TOKEN.to_owned()),
        ..Options::default()
    })
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_token_from_the_environment_is_sent_on_every_call() {
    let fake = requiring_token();
    let o = against_with(&fake, &[("HOP3_TOKEN", TOKEN)], &["backup:list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(GOOD_ID), "{}", stdout(&o));
    assert_hidden(&o, TOKEN);

    // Streams and the other calls carry it too.
    for args in [
        &["backup:create", "my-app"][..],
        &["backup:info", GOOD_ID],
        &["backup:restore", GOOD_ID],
        &["backup:delete", GOOD_ID, "--yes"],
        &["backup:import", "/srv/in/b"],
        &["agent:list"],
    ] {
        let o = against_with(&fake, &[("HOP3_TOKEN", TOKEN)], args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_hidden(&o, TOKEN);
    }
}

#[test]
fn without_the_right_token_the_call_is_refused_with_exit_6_and_a_hint() {
    let fake = requiring_token();
    let o = against(&fake, &["backup:list"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!("Error: {NOT_AUTHORIZED}\n{UNAUTHENTICATED_HINT}\n")
    );
    assert!(stdout(&o).is_empty());

    let wrong = "hop3_ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    let o = against_with(&fake, &[("HOP3_TOKEN", wrong)], &["backup:create", "app"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("not authorized"), "{}", stderr(&o));
    assert_hidden(&o, wrong);

    let o = against_with(&fake, &[("HOP3_TOKEN", wrong)], &["--json", "agent:list"]);
    assert_eq!(o.status.code(), Some(6));
    let doc = json_error(&o);
    assert_eq!(doc["error"]["code"], "UNAUTHENTICATED");
    assert_eq!(doc["error"]["message"], NOT_AUTHORIZED);
    assert_hidden(&o, wrong);
}

#[test]
fn a_token_that_cannot_be_sent_is_refused_without_showing_it() {
    let fake = requiring_token();
    let bad = "hop3_secret with spaces";
    let o = against_with(&fake, &[("HOP3_TOKEN", bad)], &["--json", "backup:list"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let doc = json_error(&o);
    assert_eq!(doc["error"]["code"], "INVALID_ARGUMENT");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HOP3_TOKEN"),
        "{doc}"
    );
    assert_hidden(&o, "secret with spaces");
}

#[cfg(unix)]
#[test]
fn a_token_from_a_private_config_file_is_used_and_an_open_one_refused() {
    let fake = requiring_token();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hop3.toml");
    let text = format!("controller = \"{}\"\ntoken = \"{TOKEN}\"\n", fake.url());
    write_private(&config, &text, 0o600);
    let config_arg = config.to_str().unwrap();
    let o = hop3(&["--config", config_arg, "backup:list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_hidden(&o, TOKEN);

    write_private(&config, &text, 0o644);
    for json in [false, true] {
        let mut args = vec!["--config", config_arg, "backup:list"];
        if json {
            args.push("--json");
        }
        let o = hop3(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("chmod 600 {config_arg}")),
            "{}",
            stderr(&o)
        );
        assert_hidden(&o, TOKEN);
    }
    // HOP3_TOKEN wins over the file, whose token is then not read.
    let o = hop3_command(&["--config", config_arg, "backup:list"])
        .env("HOP3_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A CA, written to `dir/ca.pem`, and a fake controller serving TLS with a
/// certificate it signed for 127.0.0.1, requiring [`TOKEN`].
fn tls_controller(dir: &Path) -> (FakeController, String) {
    let ca = TestCa::new("hop3-backup test CA");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let fake = FakeController::start_with(Options {
        token: Some(TOKEN.to_owned()),
        tls: Some(ca.server_cert(&["127.0.0.1"])),
        ..Options::default()
    });
    (fake, ca_path.to_str().unwrap().to_owned())
}

#[test]
fn https_with_the_ca_cert_works() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, ca) = tls_controller(dir.path());
    let url = fake.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let o = hop3_command(&["--controller", &url, "--ca-cert", &ca, "backup:list"])
        .env("HOP3_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(GOOD_ID), "{}", stdout(&o));

    // HOP3_CA_CERT, and a streamed call.
    let o = hop3_command(&["--controller", &url, "backup:create", "my-app"])
        .env("HOP3_CA_CERT", &ca)
        .env("HOP3_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // ca_cert in the config file, relative to it, with the token.
    let config = dir.path().join("hop3.toml");
    let text = format!("controller = \"{url}\"\nca_cert = \"ca.pem\"\n");
    std::fs::write(&config, text).unwrap();
    let o = hop3_command(&["--config", config.to_str().unwrap(), "agent:list"])
        .env("HOP3_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // Over TLS too, no token is refused with exit 6.
    let o = hop3(&["--controller", &url, "--ca-cert", &ca, "backup:list"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("not authorized"), "{}", stderr(&o));
}

#[test]
fn https_without_the_ca_cert_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _ca) = tls_controller(dir.path());
    let url = fake.url();
    let o = hop3_command(&["--controller", &url, "backup:list"])
        .env("HOP3_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "Error: TLS connection to the controller at {url} failed: "
        )),
        "{err}"
    );
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("--ca-cert"), "{err}");
    assert!(err.contains("\nHint: "), "{err}");
    assert_hidden(&o, TOKEN);

    let o = hop3(&["--json", "--controller", &url, "backup:list"]);
    assert_eq!(o.status.code(), Some(7));
    let doc = json_error(&o);
    assert_eq!(doc["error"]["code"], "UNAVAILABLE");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--ca-cert"),
        "{doc}"
    );
}

#[test]
fn https_with_another_ca_or_another_name_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _ca) = tls_controller(dir.path());
    let url = fake.url();

    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, TestCa::new("another CA").pem).unwrap();
    let o = hop3(&[
        "--controller",
        &url,
        "--ca-cert",
        other.to_str().unwrap(),
        "backup:list",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("UnknownIssuer"), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("no CA certificate given"),
        "{}",
        stderr(&o)
    );

    // The server name checked is the URL's host: the certificate is for
    // 127.0.0.1, not localhost.
    let ca = dir.path().join("ca.pem");
    let by_name = format!("https://localhost:{}", fake.port());
    let o = hop3(&[
        "--controller",
        &by_name,
        "--ca-cert",
        ca.to_str().unwrap(),
        "backup:list",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("not valid for"), "{}", stderr(&o));
    assert!(stderr(&o).contains("certs init --name"), "{}", stderr(&o));
}

#[test]
fn http_to_a_tls_controller_suggests_https() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _ca) = tls_controller(dir.path());
    let url = fake.url().replacen("https://", "http://", 1);
    let o = hop3_command(&["--controller", &url, "backup:list"])
        .env("HOP3_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("use an https:// URL"), "{}", stderr(&o));
    assert_hidden(&o, TOKEN);
}

#[test]
fn https_to_a_plain_controller_or_with_an_unusable_ca_fails_clearly() {
    let plain = FakeController::start();
    let url = plain.url().replacen("http://", "https://", 1);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, TestCa::new("x").pem).unwrap();
    let o = hop3(&[
        "--controller",
        &url,
        "--ca-cert",
        ca.to_str().unwrap(),
        "backup:list",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not serve TLS"), "{}", stderr(&o));

    let o = hop3(&[
        "--controller",
        &url,
        "--ca-cert",
        "/nonexistent/ca.pem",
        "backup:list",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("Error: Cannot use CA certificate /nonexistent/ca.pem: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_config_file_is_found_without_flags_and_the_old_variable_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".config/hop3");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("cli.toml"),
        "controller = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let o = hop3_command(&["--json", "backup:list"])
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("http://127.0.0.1:1"), "{}", stderr(&o));

    let o = hop3_command(&["backup:list"])
        .env("HOME", home.path())
        .env("HOP3_CONFIG", dir.join("cli.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("HOP3_CLI_CONFIG"), "{}", stderr(&o));
}

#[test]
fn completions_man_page_and_version_come_from_the_command_line_itself() {
    let o = hop3(&["completions", "bash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("backup:create") && stdout(&o).contains("_hop3"));
    let o = hop3(&["completions", "zsh"]);
    assert!(o.status.success() && stdout(&o).contains("#compdef hop3"));
    let o = hop3(&["man"]);
    assert!(
        o.status.success() && stdout(&o).contains(".TH hop3"),
        "{}",
        stdout(&o)
    );
    let o = hop3(&["--version"]);
    let v = stdout(&o);
    assert!(v.starts_with("hop3 ") && v.contains("(commit "), "{v}");
}
