//! E-mail notifier over SMTP (lettre): every message to the admins, and to
//! each affected project's contacts the part about their instances.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{Message, Notifier, NotifyError};
use crate::config::SmtpSecurity;
use crate::secret::Secret;

/// Where and as whom to send.
#[derive(Clone, Debug)]
pub struct EmailTarget {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub security: SmtpSecurity,
    pub credentials: Option<(String, Secret)>,
    pub from: String,
    pub admins: Vec<String>,
    pub project_contacts: BTreeMap<String, Vec<String>>,
    pub timeout: Duration,
}

/// Sends messages by e-mail.
pub struct EmailNotifier {
    target: EmailTarget,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl EmailNotifier {
    pub fn new(target: EmailTarget) -> Result<Self, NotifyError> {
        let build_err = |e: lettre::transport::smtp::Error| NotifyError::Build {
            notifier: format!("smtp {}", target.smtp_host),
            detail: e.to_string(),
        };
        let builder = match target.security {
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&target.smtp_host)
                    .map_err(build_err)?
            }
            SmtpSecurity::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&target.smtp_host).map_err(build_err)?
            }
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&target.smtp_host)
            }
        };
        let mut builder = builder.port(target.smtp_port).timeout(Some(target.timeout));
        if let Some((user, pass)) = &target.credentials {
            builder =
                builder.credentials(Credentials::new(user.clone(), pass.expose().to_string()));
        }
        Ok(EmailNotifier {
            transport: builder.build(),
            target,
        })
    }

    fn mailbox(&self, addr: &str) -> Result<Mailbox, NotifyError> {
        addr.parse()
            .map_err(|e: lettre::address::AddressError| NotifyError::Build {
                notifier: self.name(),
                detail: format!("address {addr:?}: {e}"),
            })
    }

    async fn send_to(&self, to: &[String], message: &Message) -> Result<(), NotifyError> {
        if to.is_empty() {
            return Ok(());
        }
        let mut b = lettre::Message::builder()
            .from(self.mailbox(&self.target.from)?)
            .subject(message.subject());
        for addr in to {
            b = b.to(self.mailbox(addr)?);
        }
        let email = b
            .header(ContentType::TEXT_PLAIN)
            .body(message.text())
            .map_err(|e| NotifyError::Build {
                notifier: self.name(),
                detail: e.to_string(),
            })?;
        self.transport
            .send(email)
            .await
            .map_err(|e| NotifyError::Unreachable {
                notifier: self.name(),
                source: Box::new(e),
            })?;
        Ok(())
    }
}

impl Notifier for EmailNotifier {
    fn name(&self) -> String {
        format!("smtp {}:{}", self.target.smtp_host, self.target.smtp_port)
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            self.send_to(&self.target.admins, message).await?;
            for project in message.projects() {
                if let Some(contacts) = self.target.project_contacts.get(project) {
                    self.send_to(contacts, &message.for_project(project))
                        .await?;
                }
            }
            Ok(())
        })
    }
}
