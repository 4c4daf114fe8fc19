//! The portal in a real browser (`tests/browser/portal.mjs`: Debian's chromium driven by
//! playwright-core, axe-core on every page), against the ticket service, the email
//! dispatcher, the OpenID Connect provider double, the portal, the broker and MailDev
//! started here. Screenshots land in
//! `target/screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use tidings_tests::portal::sign_in_stack;
use tokio::process::Command;

#[tokio::test]
async fn the_guest_and_customer_paths_work_in_chromium_at_a_phone_and_a_desktop_viewport() {
    let stack = sign_in_stack().await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let screenshots = root.join("target/screenshots");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let child = Command::new("node")
        .arg(root.join("tests/browser/portal.mjs"))
        .env("PORTAL_URL", &stack.portal.base)
        .env("MAILDEV_URL", tidings_tests::mail::shared_maildev().api)
        .env("SCREENSHOTS", &screenshots)
        .env("RUN_ID", &run_id[..12])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), child)
        .await
        .expect("the browser run ends within 3 minutes")
        .expect("node runs (make installs it with the browser test's packages)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{stderr}"
    );
    for viewport in ["phone", "desktop"] {
        for path in ["guest path", "signed-in path"] {
            assert!(
                stdout.contains(&format!("{path} ok at the {viewport} viewport")),
                "{stdout}"
            );
        }
        let shot = screenshots.join(format!("portal-{viewport}-6-ticket.png"));
        assert!(shot.exists(), "{} was written", shot.display());
    }
}
