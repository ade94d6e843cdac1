//! `vigil-decider confirm-power-off NODE`: an operator says a node is off
//! (after pulling its cords, say) so a recovery stopped in needs-attention
//! goes on. The operator token is read from a file, never a flag, so it does
//! not show in `ps` or shell history.

use std::path::PathBuf;

use clap::Args;
use tonic::metadata::MetadataValue;
use vigil_proto::v1;

use crate::cli::ClientArgs;
use crate::cli_exit::{rpc, Usage};

#[derive(Debug, Args)]
pub struct ConfirmArgs {
    /// The node, as Nova names the host.
    pub node: String,
    /// Who confirms (journaled with the incident).
    #[arg(long, env = "USER")]
    pub operator: String,
    /// Why you know it is off (journaled).
    #[arg(long)]
    pub reason: String,
    /// File holding the operator token (the decider's
    /// server.operator_token_file).
    #[arg(long, env = "VIGIL_OPERATOR_TOKEN_FILE")]
    pub token_file: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Confirms; returns the incident that goes on.
pub async fn confirm_power_off(a: &ConfirmArgs) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(&a.token_file)
        .map_err(|e| {
            Usage(format!(
                "cannot read the operator token file {}: {e}",
                a.token_file.display()
            ))
        })?
        .trim()
        .to_string();
    let auth: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| Usage("the operator token file holds characters a token cannot".into()))?;
    let mut client = crate::cli::connect(&a.client.server).await?;
    let mut req = tonic::Request::new(v1::ConfirmPowerOffRequest {
        node: a.node.clone(),
        operator: a.operator.clone(),
        reason: a.reason.clone(),
    });
    req.metadata_mut().insert("authorization", auth);
    let id = client
        .confirm_power_off(req)
        .await
        .map_err(rpc(format!("ConfirmPowerOff {}", a.node)))?
        .into_inner()
        .incident_id;
    Ok(id)
}

/// Runs the command and prints the incident; the exit code per `cli_exit`.
pub async fn run(a: &ConfirmArgs) -> i32 {
    match confirm_power_off(a).await {
        Ok(id) => {
            let v = serde_json::json!({"node": a.node, "incident": id});
            let printed = a.client.output.get().render(&v, || {
                format!("{}: power-off confirmed; incident {id} goes on\n", a.node)
            });
            match printed {
                Ok(s) => {
                    print!("{s}");
                    crate::cli_exit::OK
                }
                Err(e) => {
                    eprintln!("vigil-decider: {e:#}");
                    crate::cli_exit::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("vigil-decider: {e:#}");
            crate::cli_exit::code_for(&e)
        }
    }
}
