//! The dashboard in a real browser (Debian's chromium, headless, driven through
//! chromedriver) against two real agents replicating: the page loads behind its token, its
//! numbers are those of `ferry status --json`, a failover test started from the page serves
//! exports a real NBD client reads, and stopping it from the page records the report. The
//! test saves a screenshot of each site's page in target/.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use common::sites::{api_token, api_url, json, new_key, recovery_agent, tag_and_wait, wait_for};
use common::{Agent, qemu_io, require, run};
use webdriver::Browser;

const API: &str = "[api]\nlisten = \"127.0.0.1:0\"\n";

/// Loads `a`'s dashboard and signs in with its token from the keyboard.
fn open(b: &Browser, a: &Agent) {
    b.go(&format!("{}/ui/", api_url(a)));
    b.wait(20, "#login:not([hidden])");
    b.type_into("#token", &api_token(a));
    // Enter in the field submits the form: the page is usable from the keyboard.
    b.keys("\u{E007}");
    b.wait(20, "body[data-loaded=true]");
}

fn indicator(b: &Browser, id: &str) -> String {
    b.js(
        "return document.getElementById(arguments[0]).dataset.value;",
        serde_json::json!([id]),
    )
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Every form control has a label a screen reader reads.
fn every_control_is_labelled(b: &Browser) {
    let unlabelled = b.js(
        "return [...document.querySelectorAll('input,select,textarea')]
            .filter(e => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
            .map(e => e.id || e.name);",
        serde_json::json!([]),
    );
    assert_eq!(unlabelled, serde_json::json!([]), "controls without a label");
}

#[test]
fn the_dashboard_shows_the_sites_numbers_and_runs_a_failover_test_from_the_page() {
    require("chromium");
    require("chromedriver");
    require("qemu-img");
    let a = Agent::start_with("dash-a", API);
    let key = new_key(&a.dir);
    let (b, peer) = recovery_agent("dash-b", &key, API);
    a.create("d0", "32M");
    a.create("d1", "16M");
    a.ferry_line(&format!(
        "vpg create app --volume d0 --volume d1 --journal-size 16M --peer {peer} --peer-key {} --rpo 30s --wait",
        key.display()
    ));
    qemu_io(a.tcp_uri("d0"), &["write -P 0x5a 1M 2M"]);
    tag_and_wait(&a, &b, "app", "dash");

    // Without the token the API refuses, and the page asks for it.
    let out = run(std::process::Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/v1/status", api_url(&b)),
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");

    let browser = Browser::start("dash");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));

    // The protected site: its VPG, volumes, data and RPO as `ferry status --json` has them.
    open(&browser, &a);
    every_control_is_labelled(&browser);
    let st = json(&a, &["status", "--json"]);
    let m = &st["summary"];
    assert_eq!(indicator(&browser, "ind-vpgs"), m["vpgs"].to_string());
    assert_eq!(indicator(&browser, "ind-volumes"), m["volumes_protected"].to_string());
    assert_eq!(indicator(&browser, "ind-data"), m["data_protected_bytes"].to_string());
    assert_eq!(m["data_protected_bytes"], 48 << 20);
    let page_rpo: f64 = indicator(&browser, "ind-rpo")
        .parse()
        .expect("the page shows an average RPO");
    // The RPO moves between the two readings; within its target, and near the CLI's.
    let cli_rpo = m["average_rpo_s"].as_f64().expect("status has an average RPO");
    assert!(
        (0.0..=30.0).contains(&page_rpo) && (page_rpo - cli_rpo).abs() < 5.0,
        "average RPO: {page_rpo} on the page, {cli_rpo} from the CLI"
    );
    let row = browser.text("#vpg-table tr[data-vpg=app]");
    assert!(
        row.contains(&format!("this site → {peer}")) && row.contains("meeting"),
        "{row}"
    );

    // Tag a checkpoint from the page; the recovery site receives it.
    browser.type_into("#tag-name", "from-the-page");
    browser.click("#tag-form button");
    assert!(wait_for(30, || browser
        .text("#tag-form .result")
        .contains("tagged checkpoint")));
    assert!(wait_for(30, || b
        .ferry(&["checkpoint", "list", "app"])
        .contains("from-the-page")));
    browser.screenshot(&shots.join("dashboard-protected.png"));

    // The recovery site: its replica, and a failover test from the page.
    open(&browser, &b);
    every_control_is_labelled(&browser);
    let st = json(&b, &["status", "--json"]);
    assert_eq!(indicator(&browser, "ind-vpgs"), st["summary"]["vpgs"].to_string());
    assert_eq!(
        indicator(&browser, "ind-volumes"),
        st["summary"]["volumes_protected"].to_string()
    );
    assert_eq!(
        indicator(&browser, "ind-data"),
        st["summary"]["data_protected_bytes"].to_string()
    );
    let row = browser.text("#vpg-table tr[data-vpg=app]");
    assert!(row.contains("→ this site"), "{row}");

    browser.click("#test-form button");
    browser.wait(30, "[data-test=app] .uri");
    let uris: Vec<String> = browser
        .js(
            "return [...document.querySelectorAll('[data-test=app] li')].map(li => li.textContent);",
            serde_json::json!([]),
        )
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(uris.len(), 2, "{uris:?}");
    let d0 = uris
        .iter()
        .find_map(|u| u.strip_prefix("d0: "))
        .expect("the page shows d0's export");
    // A real NBD client reads the test's export: the bytes written before the checkpoint.
    qemu_io(d0, &["read -P 0x5a 1M 2M", "read -P 0 0 1M"]);
    let running = json(&b, &["status", "--json"])["failover_tests"].clone();
    assert_eq!(running[0]["vpg"], "app", "{running}");
    browser.screenshot(&shots.join("dashboard-recovery-test.png"));

    // Stop it from the page with a result and a note: the report is recorded.
    browser.click("[data-stop=app]");
    browser.click("#stop input[value=fail]");
    browser.type_into("#stop-note", "boot check failed on purpose");
    browser.click("#stop-go");
    assert!(wait_for(30, || browser
        .text("#test-form .result")
        .contains("report recorded")));
    let reports = json(&b, &["failover", "report", "app", "--json"]);
    let last = reports.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["result"], "fail");
    assert_eq!(last["note"], "boot check failed on purpose");

    // Live mode: the red banner, and a failover waits for the VPG's name to be typed.
    browser.click("input[name=mode][value=live]");
    assert!(browser.text("#live-banner").contains("LIVE"));
    browser.click("#live-form button.danger");
    browser.wait(10, "#confirm[open]");
    browser.type_into("#confirm-name", "not-the-name");
    browser.click("#confirm-go");
    assert!(wait_for(10, || browser
        .text("#live-form .result")
        .contains("Not confirmed")));
    assert_eq!(json(&b, &["status", "--json"])["live_failovers"], serde_json::json!([]));
    let shot = shots.join("dashboard-recovery.png");
    browser.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    println!("screenshots in {}", shots.display());
}
