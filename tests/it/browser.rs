//! The web console end to end, in Debian's headless Chromium driven through chromedriver by
//! selenium (`tests/python/console_browser.py`), against a real `orderflow run`: a customer logs
//! in, places an order (a wrong field first, named next to it) and watches its timeline reach
//! `invoiced` without reloading, downloads the invoice (its text read back with pypdf: the
//! customer's name outside Latin-1 and the address as written); an admin adjusts the price of
//! an unpaid order and ships another; the customer sees `shipped` and its cancelled order still
//! listed; another customer registers (the emailed code from the file sink) and sees none of
//! it.
//!
//! Screenshots of the main pages are kept in `target/tmp/console-screenshots/` (under
//! `CARGO_TARGET_DIR`). Without `chromium` and `chromedriver` (`scripts/test.sh` installs
//! them) the test says SKIPPED and passes.

use crate::common;

use std::{path::Path, process::Command};

use common::{python, Pipeline};

/// Where the screenshots go.
const SCREENSHOTS: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/console-screenshots");

fn installed(path: &str) -> bool {
    Path::new(path).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_end_to_end_in_a_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let driver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    if !installed(&chromium) || !installed(&driver) {
        eprintln!(
            "SKIPPED: the browser test needs {chromium} and {driver} \
             (apt-get install chromium chromium-driver)"
        );
        return;
    }
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(SCREENSHOTS).unwrap();
    let p = Pipeline::start(dir.path());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/console_browser.py"
    );
    let out = Command::new(python)
        .arg(script)
        .arg(&p.http)
        .arg(SCREENSHOTS)
        .arg(downloads.path())
        .arg(p.data_dir.join("notifications.jsonl"))
        .env("ORDERFLOW_TEST_TOKEN", p.admin.token())
        .env("CHROMIUM", &chromium)
        .env("CHROMEDRIVER", &driver)
        // Selenium Manager would look for drivers on the internet: the system's are given.
        .env("SE_OFFLINE", "true")
        .output()
        .expect("the browser script runs");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the console failed in the browser:\n{report}"
    );
    for page in [
        "login",
        "new-order-error",
        "order-invoiced",
        "order-price-adjusted",
        "orders-admin",
        "customers",
        "products",
        "pipeline",
        "orders",
        "order-phone",
    ] {
        let shot = Path::new(SCREENSHOTS).join(format!("{page}.png"));
        assert!(shot.exists(), "{} was saved", shot.display());
    }
    assert!(p.stop().success());
}
