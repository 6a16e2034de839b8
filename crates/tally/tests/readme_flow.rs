//! The README's first calls, run for real: the `tally` binary's `dev` command, then the CLI and
//! a generic gRPC client (grpcurl, through server reflection) against it.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn tally(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("TALLY_ADDR", format!("http://{addr}"))
        .output()
        .expect("the tally binary runs")
}

fn stdout_of(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{what} failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

fn start_dev(data_dir: &std::path::Path, addr: &str) -> Dev {
    let child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["dev", "--no-metrics", "--listen", addr, "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "tally dev did not open {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Dev(child)
}

#[test]
fn cli_flow_from_the_readme() {
    let temp = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _dev = start_dev(&temp.path().join("data"), &addr);

    let created = stdout_of(
        &tally(&addr, &["partner", "create", "--id", "skyair", "--currency", "SKYMILES"]),
        "create",
    );
    let api_key =
        created.lines().find_map(|line| line.strip_prefix("api key (shown once): ")).expect("a key");
    stdout_of(
        &tally(&addr, &["partner", "create", "--id", "grandhotel", "--currency", "HOTELPTS"]),
        "create",
    );
    let partners = stdout_of(&tally(&addr, &["partner", "list"]), "list");
    assert!(partners.contains("skyair") && partners.contains("grandhotel"), "{partners}");

    stdout_of(
        &tally(
            &addr,
            &[
                "agreement",
                "set",
                "--from",
                "SKYMILES",
                "--to",
                "HOTELPTS",
                "--rate",
                "1/2",
                "--minimum",
                "100",
            ],
        ),
        "agreement set",
    );
    let agreements = stdout_of(&tally(&addr, &["agreement", "list"]), "agreement list");
    assert!(agreements.contains("1/2"), "{agreements}");

    let earned = stdout_of(
        &tally(
            &addr,
            &["earn", "--api-key", api_key, "--member", "alice", "--points", "1500", "--key", "first"],
        ),
        "earn",
    );
    assert!(earned.contains("balance 1500"), "{earned}");
    let replayed = stdout_of(
        &tally(
            &addr,
            &["earn", "--api-key", api_key, "--member", "alice", "--points", "1500", "--key", "first"],
        ),
        "earn again",
    );
    assert!(replayed.contains("(replay)") && replayed.contains("balance 1500"), "{replayed}");
    stdout_of(
        &tally(&addr, &["redeem", "--api-key", api_key, "--member", "alice", "--points", "200"]),
        "redeem",
    );
    let balance =
        stdout_of(&tally(&addr, &["balance", "--api-key", api_key, "--member", "alice"]), "balance");
    assert!(balance.contains("balance 1300") && balance.contains("linearizable"), "{balance}");
    let statement =
        stdout_of(&tally(&addr, &["statement", "--api-key", api_key, "--member", "alice"]), "statement");
    assert!(statement.contains("2 of 2 lines"), "{statement}");

    // Every other write from the shell.
    let run = |args: &[&str], what: &str| stdout_of(&tally(&addr, args), what);
    let sky = |rest: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = rest.iter().map(|arg| arg.to_string()).collect();
        args.extend(["--api-key".to_string(), api_key.to_string()]);
        args
    };
    let call = |rest: &[&str], what: &str| {
        let args = sky(rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, what)
    };
    assert!(call(&["enrol", "--member", "bob"], "enrol").contains("bob SKYMILES: balance 0"));
    let held = call(&["hold", "--member", "alice", "--points", "300", "--key", "h1"], "hold");
    assert!(held.contains("held 300 available 1000") && held.contains("hold h1: open"), "{held}");
    let captured = call(&["capture", "--hold-key", "h1", "--member", "alice", "--points", "100"], "capture");
    assert!(captured.contains("balance 1200 held 0") && captured.contains("captured"), "{captured}");
    call(&["hold", "--member", "alice", "--points", "50", "--key", "h2"], "hold");
    let voided = call(&["void", "--hold-key", "h2", "--member", "alice"], "void");
    assert!(voided.contains("hold h2: voided"), "{voided}");
    let reversed =
        call(&["reverse", "--earn-key", "first", "--member", "alice", "--points", "200"], "reverse");
    assert!(reversed.contains("reversed 200, 1300 still reversible"), "{reversed}");
    let transferred = call(&["transfer", "--from", "alice", "--to", "bob", "--points", "100"], "transfer");
    assert!(transferred.contains("bob SKYMILES: balance 100"), "{transferred}");
    let exchanged = call(
        &[
            "exchange",
            "--member",
            "alice",
            "--from-currency",
            "SKYMILES",
            "--to-currency",
            "HOTELPTS",
            "--points",
            "200",
        ],
        "exchange",
    );
    assert!(
        exchanged.contains("credited 100") && exchanged.contains("alice HOTELPTS: balance 100"),
        "{exchanged}"
    );
    let looked_up = call(&["operation", "--key", "h1", "--member", "alice"], "operation");
    assert!(looked_up.contains("authorize_hold"), "{looked_up}");

    let refused = tally(&addr, &["redeem", "--api-key", api_key, "--member", "alice", "--points", "20000"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("FailedPrecondition") && message.contains("insufficient"), "{message}");

    let statement =
        stdout_of(&tally(&addr, &["statement", "--api-key", api_key, "--member", "alice"]), "statement");
    assert!(
        statement.contains("6 of 6 lines"),
        "earn, redeem, capture, reversal, transfer, exchange: {statement}"
    );

    // Every posting debits one account and credits another: 1500 earned + 200 redeemed + 100
    // captured + 200 reversed + 200 exchanged + 100 transferred (`tally dev` has one shard, so
    // the transfer is one posting from alice to bob, not two through transit).
    let status = stdout_of(&tally(&addr, &["status"]), "status");
    assert!(status.contains("SKYMILES: debits 2300 credits 2300 (conserved)"), "{status}");
    assert!(status.contains("HOTELPTS: debits 100 credits 100 (conserved)"), "{status}");
}

fn grpcurl(addr: &str, args: &[&str]) -> Option<Output> {
    match Command::new("grpcurl").arg("-plaintext").arg(addr).args(args).output() {
        Ok(output) => Some(output),
        Err(_) if std::env::var_os("TALLY_REQUIRE_GRPCURL").is_some() => {
            panic!("grpcurl is required but missing")
        }
        Err(_) => None,
    }
}

#[test]
fn a_generic_grpc_client_can_discover_and_call_the_api() {
    let temp = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _dev = start_dev(&temp.path().join("data"), &addr);
    let Some(listed) = grpcurl(&addr, &["list"]) else {
        eprintln!("grpcurl not installed: skipped (./scripts/test.sh installs it)");
        return;
    };
    let services = stdout_of(&listed, "grpcurl list");
    for service in ["tally.v1.Ledger", "tally.v1.Admin", "grpc.health.v1.Health"] {
        assert!(services.contains(service), "{services}");
    }
    let call = |args: &[&str], method: &str| {
        let output =
            Command::new("grpcurl").arg("-plaintext").args(args).arg(&addr).arg(method).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, created) =
        call(&["-d", r#"{"partner_id":"skyair","currency":"SKYMILES"}"#], "tally.v1.Admin/CreatePartner");
    assert!(ok, "{created}");
    let api_key =
        created.split("\"apiKey\": \"").nth(1).and_then(|rest| rest.split('"').next()).expect("apiKey");
    let auth = format!("authorization: Bearer {api_key}");
    let (ok, earned) = call(
        &["-H", &auth, "-d", r#"{"idempotency_key":"g1","member_id":"bob","amount_points":42}"#],
        "tally.v1.Ledger/Earn",
    );
    assert!(ok && earned.contains("\"balancePoints\": \"42\""), "{earned}");
    let (ok, refused) = call(
        &["-H", &auth, "-d", r#"{"idempotency_key":"g2","member_id":"bob","amount_points":0}"#],
        "tally.v1.Ledger/Earn",
    );
    assert!(!ok && refused.contains("InvalidArgument") && refused.contains("amount_points"), "{refused}");
    let (ok, health) = call(&["-d", r#"{"service":"tally.v1.Ledger"}"#], "grpc.health.v1.Health/Check");
    assert!(ok && health.contains("SERVING"), "{health}");
}

/// A client in another language, with stubs generated from proto/ by grpcio-tools
/// (cluster/clients/python/partner_smoke.py), drives the API against the real binary.
#[test]
fn a_python_client_generated_from_the_protos_works() {
    let has_grpc = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_grpc {
        assert!(
            std::env::var_os("TALLY_REQUIRE_PYTHON_GRPC").is_none(),
            "python3 with grpcio and grpcio-tools is required but missing"
        );
        eprintln!("python grpcio/grpcio-tools not installed: skipped (./scripts/test.sh installs them)");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _dev = start_dev(&temp.path().join("data"), &addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cluster/clients/python/partner_smoke.py");
    let output = Command::new("python3").arg(script).args(["--addr", &addr]).output().unwrap();
    let stdout = stdout_of(&output, "the Python client");
    assert!(stdout.contains("checks passed"), "{stdout}");
}
