//! `vigil-decider confirm-power-off NODE`: an operator says a node is off
//! (after pulling its cords, say) so a recovery stopped in needs-attention
//! goes on. The operator token is read from a file, never a flag, so it does
//! not show in `ps` or shell history.

use clap::Args;
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
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Confirms; returns the incident that goes on.
pub async fn confirm_power_off(a: &ConfirmArgs) -> anyhow::Result<String> {
    // The operator token comes from --token-file (the decider's
    // server.operator_token_file), never a flag of its own, so it does not
    // show in `ps` or shell history.
    if a.client.token_file.is_none() {
        return Err(Usage(
            "confirm-power-off needs --token-file FILE holding the operator token (the decider's server.operator_token_file)".into(),
        )
        .into());
    }
    let (mut client, auth) = crate::cli::connect(&a.client).await?;
    let id = client
        .confirm_power_off(auth.request(v1::ConfirmPowerOffRequest {
            node: a.node.clone(),
            operator: a.operator.clone(),
            reason: a.reason.clone(),
        }))
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
