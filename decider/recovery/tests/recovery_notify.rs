//! Notifications to real receivers: a webhook receiver (Python's http.server)
//! that checks nothing and records everything, so the test verifies the HMAC
//! itself; and an SMTP server (aiosmtpd, PyPI) writing a Maildir.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vigil_recovery::config::SmtpSecurity;
use vigil_recovery::journal::IncidentId;
use vigil_recovery::notify::email::{EmailNotifier, EmailTarget};
use vigil_recovery::notify::webhook::{verify, WebhookNotifier};
use vigil_recovery::notify::{Dispatcher, InstanceReport, Message, Notifier, RetryPolicy};
use vigil_recovery::secret::Secret;
use vigil_recovery::time::SystemClock;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn python_has(module: &str, test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let msg = format!("{test}: needs python3 with {module} (pip install {module})");
        assert!(!vigil_tests::tier::strict(), "{msg}");
        eprintln!("SKIPPED {msg}");
    }
    ok
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn finished() -> Message {
    let inst = |id: &str, project: &str| InstanceReport {
        server_id: id.into(),
        name: format!("vm-{id}"),
        project_id: project.into(),
        from_host: "compute1".into(),
        to_host: Some("compute2".into()),
        took_secs: Some(11.5),
        state: "evacuated".into(),
        reason: None,
        status: Some("ACTIVE".into()),
        evacuate_actions: Some(1),
    };
    Message::EvacuationFinished {
        incident: IncidentId("inc-1".into()),
        node: "compute1".into(),
        instances: vec![inst("aaa", "proj-a"), inst("bbb", "proj-b")],
    }
}

const RECEIVER: &str = r#"
import http.server, json, sys
out = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        with open(out, 'a') as f:
            f.write(json.dumps({"sig": self.headers.get('X-Vigil-Signature'), "event": self.headers.get('X-Vigil-Event'), "body": body.decode()}) + "\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

fn receiver(port: u16, out: &Path) -> Proc {
    Proc(
        Command::new("python3")
            .args([
                "-c",
                RECEIVER,
                &port.to_string(),
                &out.display().to_string(),
            ])
            .spawn()
            .expect("start webhook receiver"),
    )
}

#[tokio::test]
async fn recovery_webhook_is_signed_and_retried_until_the_receiver_is_up() {
    if !python_has("http.server", "recovery_webhook") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("hooks.jsonl");
    let port = free_port();
    let key = Secret::new("hook-key");
    let hook: Arc<dyn Notifier> = Arc::new(
        WebhookNotifier::new(
            format!("http://127.0.0.1:{port}/vigil"),
            key.clone(),
            Duration::from_secs(5),
        )
        .expect("client"),
    );
    let d = Dispatcher::new(
        vec![hook],
        RetryPolicy {
            attempts: 20,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        },
        Arc::new(SystemClock),
        None,
    );
    // Sent while nobody listens: the dispatcher keeps trying in the background.
    let handles = d.dispatch(finished());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _rx = receiver(port, &out);
    let delivery = tokio::time::timeout(Duration::from_secs(30), async {
        handles
            .into_iter()
            .next()
            .expect("one notifier")
            .await
            .expect("task")
    })
    .await
    .expect("delivered in time");
    assert!(delivery.delivered && delivery.attempts > 1, "{delivery:?}");
    let line = std::fs::read_to_string(&out).expect("receiver log");
    let rec: serde_json::Value =
        serde_json::from_str(line.lines().next().expect("one request")).expect("json");
    let body = rec["body"].as_str().expect("body");
    assert!(
        verify(
            &key,
            body.as_bytes(),
            rec["sig"].as_str().expect("signature header")
        ),
        "valid signature: {rec}"
    );
    assert!(!verify(
        &Secret::new("other-key"),
        body.as_bytes(),
        rec["sig"].as_str().unwrap_or_default()
    ));
    assert_eq!(rec["event"], "evacuation-finished");
    let msg: serde_json::Value = serde_json::from_str(body).expect("message json");
    assert_eq!(msg["type"], "evacuation-finished");
    assert_eq!(msg["instances"][0]["to_host"], json!("compute2"));
}

#[tokio::test]
async fn recovery_email_reaches_admins_and_each_projects_contacts() {
    if !python_has("aiosmtpd", "recovery_email") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = dir.path().join("mail");
    let port = free_port();
    let _smtp = Proc(
        Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
                &maildir.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd"),
    );
    vigil_tests::wait::until(
        "aiosmtpd listens",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ()),
    )
    .expect("smtp up");
    let email = EmailNotifier::new(EmailTarget {
        smtp_host: "127.0.0.1".into(),
        smtp_port: port,
        security: SmtpSecurity::None,
        credentials: None,
        from: "vigil@example.org".into(),
        admins: vec!["oncall@example.org".into()],
        project_contacts: BTreeMap::from([(
            "proj-a".to_string(),
            vec!["alice@example.org".to_string()],
        )]),
        timeout: Duration::from_secs(10),
    })
    .expect("notifier");
    email.send(&finished()).await.expect("sent");

    let new = maildir.join("new");
    let (mails, _) = vigil_tests::wait::until(
        "two mails in the maildir",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let mails: Vec<String> = std::fs::read_dir(&new)
                .map(|rd| {
                    rd.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                        // Undo quoted-printable soft line breaks.
                        .map(|m| m.replace("=\r\n", "").replace("=\n", ""))
                        .collect()
                })
                .unwrap_or_default();
            if mails.len() >= 2 {
                Ok(mails)
            } else {
                Err(mails.len())
            }
        },
    )
    .expect("mail delivered");
    let admin = mails
        .iter()
        .find(|m| m.contains("To: oncall@example.org"))
        .expect("admin mail");
    assert!(
        admin.contains("vm-aaa")
            && admin.contains("vm-bbb")
            && admin.contains("compute1 -> compute2"),
        "{admin}"
    );
    let alice = mails
        .iter()
        .find(|m| m.contains("To: alice@example.org"))
        .expect("project contact mail");
    assert!(
        alice.contains("vm-aaa") && !alice.contains("vm-bbb"),
        "a project sees only its instances: {alice}"
    );
}
