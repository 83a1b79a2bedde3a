//! The control API over TCP, from outside with curl: the bearer token (missing, wrong,
//! replaced by `ferry api token`), refusals logged at a bounded rate, TLS through rustls
//! with a certificate from openssl, plain HTTP off loopback refused at start, JSON errors,
//! and long operations as tasks.

mod common;

use std::process::Command;

use common::sites::{api_token, api_url, json, new_key, recovery_agent, wait_for};
use common::{Agent, FERRY, ok, require, run};

/// (status, body) of a curl request.
fn curl(args: &[&str]) -> (u16, String) {
    let out = run(Command::new("curl").args(["-s", "-w", "\n%{http_code}"]).args(args));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// POSTs `body` as JSON with header `h`: (status, body).
fn post_json(h: &str, body: &str, url: &str) -> (u16, String) {
    curl(&["-H", h, "-H", "Content-Type: application/json", "-d", body, url])
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

#[test]
fn over_tcp_every_request_needs_the_token_and_a_new_one_replaces_it_at_once() {
    require("curl");
    let a = Agent::start_with("api-token", "[api]\nlisten = \"127.0.0.1:0\"\n");
    let url = api_url(&a);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let mode = std::fs::metadata(a.dir.join("api.token")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let (code, body) = curl(&[&format!("{url}/v1/status")]);
    assert_eq!(code, 401);
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"], "this API needs a bearer token");
    assert!(e["hint"].as_str().unwrap().contains("ferry api token"), "{e}");
    let (code, _) = curl(&["-H", &bearer("not-the-token"), &format!("{url}/v1/status")]);
    assert_eq!(code, 401);
    let old = api_token(&a);
    let (code, body) = curl(&["-H", &bearer(&old), &format!("{url}/v1/status")]);
    assert_eq!(code, 200, "{body}");
    // The dashboard's page needs no token (it holds no data); /metrics does.
    assert_eq!(curl(&[&format!("{url}/ui/")]).0, 200);
    assert_eq!(curl(&[&format!("{url}/metrics")]).0, 401);

    // Refusals are logged at most once per 10 s, with how many were not.
    for _ in 0..20 {
        curl(&["-H", &bearer("wrong"), &format!("{url}/v1/vpgs")]);
    }
    let refusals = a.log().matches("API request refused: bad bearer token").count();
    assert!((1..=2).contains(&refusals), "{refusals} log lines for 22 refusals");

    // A new token works at once, and the old one no longer does.
    let out = ok(Command::new(FERRY)
        .args(["api", "token", "--print", "--file"])
        .arg(a.dir.join("api.token")));
    let new = out.lines().last().unwrap().trim().to_string();
    assert_eq!(new.len(), 64);
    assert_eq!(new, api_token(&a));
    assert_eq!(curl(&["-H", &bearer(&old), &format!("{url}/v1/status")]).0, 401);
    assert_eq!(curl(&["-H", &bearer(&new), &format!("{url}/v1/status")]).0, 200);

    // Errors are JSON with a status that fits: unknown path, method, object, bad body.
    let h = bearer(&new);
    let (code, body) = curl(&["-H", &h, &format!("{url}/v1/nothing")]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("\"hint\""), "{body}");
    let (code, body) = curl(&["-H", &h, "-X", "PUT", &format!("{url}/v1/status")]);
    assert_eq!(code, 405, "{body}");
    assert!(body.contains("does not take PUT"), "{body}");
    let (code, body) = curl(&["-H", &h, &format!("{url}/v1/vpgs/none")]);
    assert_eq!(code, 404);
    assert!(body.contains("GET /v1/vpgs lists the VPGs"), "{body}");
    let (code, body) = post_json(&h, "{\"name\": 7}", &format!("{url}/v1/volumes"));
    assert_eq!(code, 422, "{body}");
    let (code, body) = post_json(&h, "{not json", &format!("{url}/v1/volumes"));
    assert_eq!(code, 400, "{body}");
    let (code, body) = post_json(
        &h,
        "{\"name\":\"x\",\"path\":\"/nonexistent/disk\"}",
        &format!("{url}/v1/volumes/adopt"),
    );
    assert_eq!(code, 404, "{body}");
    // The OpenAPI document is served, and is the committed one.
    let (code, body) = curl(&["-H", &h, &format!("{url}/v1/openapi.json")]);
    assert_eq!(code, 200);
    let committed =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")).unwrap();
    assert_eq!(body.trim_end(), committed.trim_end());
}

#[test]
fn tls_from_a_pem_certificate_and_plain_http_off_loopback_refused_at_start() {
    require("curl");
    require("openssl");
    let dir = common::scratch_dir("api-tls");
    ok(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem")));
    let a = Agent::start_with(
        "api-tls",
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            dir.join("cert.pem").display().to_string(),
            dir.join("key.pem").display().to_string()
        ),
    );
    let url = api_url(&a);
    assert!(url.starts_with("https://"), "{url}");
    let cacert = dir.join("cert.pem").display().to_string();
    let (code, body) = curl(&[
        "--cacert",
        &cacert,
        "-H",
        &bearer(&api_token(&a)),
        &format!("{url}/v1/status"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"api_listen\""));
    // Without the certificate the client refuses the server; plain HTTP gets nothing.
    assert_eq!(curl(&[&format!("{url}/v1/status")]).0, 0);
    let plain = url.replace("https://", "http://");
    assert_eq!(curl(&["--max-time", "5", &format!("{plain}/v1/status")]).0, 0);

    // Plain HTTP on an address other than loopback: the agent does not start, and says how
    // to add TLS.
    let cfg = dir.join("plain.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[api]\nlisten = \"0.0.0.0:0\"\n",
            dir.join("plain").display().to_string()
        ),
    )
    .unwrap();
    let out = run(Command::new(FERRY).args(["agent", "--config"]).arg(&cfg));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not loopback") && err.contains("api.tls_cert") && err.contains("openssl req"),
        "{err}"
    );
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_protected_vpg_s_initial_sync_is_a_task_a_client_polls() {
    require("curl");
    let a = Agent::start_with("api-tasks-a", "[api]\nlisten = \"127.0.0.1:0\"\n");
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("api-tasks-b", &key, "");
    a.create("d0", "64M");
    let url = api_url(&a);
    let h = bearer(&api_token(&a));
    let (code, body) = curl(&[
        "-H",
        &h,
        "-H",
        "Content-Type: application/json",
        "-D",
        "-",
        "-d",
        &serde_json::json!({
            "name": "app", "volumes": ["d0"], "journal_bytes": 16 << 20,
            "protect": {"peer": peer, "pairing_key": key}
        })
        .to_string(),
        &format!("{url}/v1/vpgs"),
    ]);
    assert_eq!(code, 201, "{body}");
    // The answer names its task, and the task ends done (polled as a client would).
    let task = body
        .lines()
        .find_map(|l| l.strip_prefix("ferry-task: "))
        .unwrap_or_else(|| panic!("no ferry-task header: {body}"))
        .trim()
        .to_string();
    let mut last = serde_json::Value::Null;
    assert!(
        wait_for(60, || {
            let (code, body) = curl(&["-H", &h, &format!("{url}{task}")]);
            assert_eq!(code, 200, "{body}");
            last = serde_json::from_str(&body).unwrap();
            last["state"] == "done"
        }),
        "{last}"
    );
    assert_eq!(last["kind"], "initial_sync");
    assert_eq!(last["vpg"], "app");
    assert_eq!(last["total_bytes"], 64 << 20);
    assert_eq!(last["percent"], 100.0);
    let listed = json(&a, &["tasks", "--json", "--vpg", "app"]);
    assert_eq!(listed[0]["id"], last["id"]);
    drop(b);
}
