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
use vigil_recovery::config::{NotifyConfig, SmtpSecurity, WebhookConfig};
use vigil_recovery::journal::IncidentId;
use vigil_recovery::notify::email::{EmailNotifier, EmailTarget};
use vigil_recovery::notify::webhook::{verify, verify_delivery, WebhookNotifier, SCHEMA_VERSION};
use vigil_recovery::notify::{
    notifiers_from_config, Dispatcher, InstanceReport, Message, Notifier, RetryPolicy,
};
use vigil_recovery::secret::{Secret, SecretSource};
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
refuse = [int(sys.argv[3]) if len(sys.argv) > 3 else 0]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        with open(out, 'a') as f:
            f.write(json.dumps({"sig": self.headers.get('X-Vigil-Signature'), "event": self.headers.get('X-Vigil-Event'), "body": body.decode()}) + "\n")
        if refuse[0] > 0:
            refuse[0] -= 1
            self.send_response(503)
        else:
            self.send_response(204)
        self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

/// A receiver that answers 503 to its first `refuse` requests.
fn receiver(port: u16, out: &Path, refuse: u32) -> Proc {
    Proc(
        Command::new("python3")
            .args([
                "-c",
                RECEIVER,
                &port.to_string(),
                &out.display().to_string(),
                &refuse.to_string(),
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
    // It refuses the first request it sees, so one retry reaches it twice.
    let _rx = receiver(port, &out, 1);
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
    let log = std::fs::read_to_string(&out).expect("receiver log");
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(recs.len(), 2, "one refused, one accepted: {log}");
    let rec = &recs[1];
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
    // The retry is the same delivery, signed again with its own send time,
    // and what a receiver checks passes.
    let first: serde_json::Value =
        serde_json::from_str(recs[0]["body"].as_str().expect("body")).expect("json");
    assert_eq!(first["delivery_id"], msg["delivery_id"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let h = verify_delivery(
        &key,
        body.as_bytes(),
        rec["sig"].as_str().expect("signature header"),
        i64::try_from(now).expect("now"),
        Duration::from_secs(300),
    )
    .expect("a receiver accepts it");
    assert_eq!(h.schema_version, SCHEMA_VERSION);
    assert!(!h.delivery_id.is_empty());
}

/// `webhook` plus `[[webhooks]]`: every receiver gets each message, signed
/// with its own key.
#[tokio::test]
async fn recovery_webhooks_several_receivers_each_with_its_key() {
    if !python_has("http.server", "recovery_webhooks") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = NotifyConfig::default();
    let mut receivers = Vec::new();
    let mut env = BTreeMap::new();
    for i in 0..3 {
        let port = free_port();
        let out = dir.path().join(format!("hook{i}.jsonl"));
        receivers.push((receiver(port, &out, 0), out));
        env.insert(format!("HOOK_KEY_{i}"), format!("key-{i}"));
        let w = WebhookConfig {
            url: format!("http://127.0.0.1:{port}/vigil"),
            secret: SecretSource::Env(format!("HOOK_KEY_{i}")),
            timeout: Duration::from_secs(5),
        };
        if i == 0 {
            cfg.webhook = Some(w);
        } else {
            cfg.webhooks.push(w);
        }
    }
    let notifiers = notifiers_from_config(&cfg, &env).expect("notifiers");
    assert_eq!(notifiers.len(), 3);
    let d = Dispatcher::new(
        notifiers,
        RetryPolicy {
            attempts: 50,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(200),
        },
        Arc::new(SystemClock),
        None,
    );
    for h in d.dispatch(finished()) {
        let delivery = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("delivered in time")
            .expect("task");
        assert!(delivery.delivered, "{delivery:?}");
    }
    for (i, (_rx, out)) in receivers.iter().enumerate() {
        let log = std::fs::read_to_string(out).expect("receiver log");
        let rec: serde_json::Value =
            serde_json::from_str(log.lines().last().expect("a request")).expect("json");
        let sig = rec["sig"].as_str().expect("signature");
        let body = rec["body"].as_str().expect("body");
        assert!(
            verify(&Secret::new(format!("key-{i}")), body.as_bytes(), sig),
            "receiver {i}"
        );
        let other = (i + 1) % 3;
        assert!(!verify(
            &Secret::new(format!("key-{other}")),
            body.as_bytes(),
            sig
        ));
    }
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
