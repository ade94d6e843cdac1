//! `--format table|json|yaml`, the same on every command that prints data
//! (`--json` stays as shorthand for `--format json`: scripts use it).

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    #[default]
    Table,
    /// Pretty JSON (one compact JSON object per line for `watch`).
    Json,
    /// YAML (one document per change for `watch`).
    Yaml,
}

#[derive(Debug, Clone, Args)]
pub struct FormatArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table, env = "VIGIL_FORMAT")]
    pub format: Format,
    /// Shorthand for `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

impl FormatArgs {
    pub fn get(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

impl Format {
    /// The whole output: `table()` for people, `value` otherwise.
    pub fn render<T: Serialize + ?Sized>(
        self,
        value: &T,
        table: impl FnOnce() -> String,
    ) -> anyhow::Result<String> {
        Ok(match self {
            Format::Table => table(),
            Format::Json => {
                let mut s = serde_json::to_string_pretty(value).context("encoding JSON")?;
                s.push('\n');
                s
            }
            Format::Yaml => serde_yaml_ng::to_string(value).context("encoding YAML")?,
        })
    }

    /// One item of a stream (`watch`): a line, a JSON line, a YAML document.
    pub fn render_item<T: Serialize + ?Sized>(
        self,
        value: &T,
        line: impl FnOnce() -> String,
    ) -> anyhow::Result<String> {
        Ok(match self {
            Format::Table => format!("{}\n", line()),
            Format::Json => format!(
                "{}\n",
                serde_json::to_string(value).context("encoding JSON")?
            ),
            Format::Yaml => format!(
                "---\n{}",
                serde_yaml_ng::to_string(value).context("encoding YAML")?
            ),
        })
    }

    pub fn print<T: Serialize + ?Sized>(
        self,
        value: &T,
        table: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        print!("{}", self.render(value, table)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_value_in_each_format() {
        let v = serde_json::json!({"node": "compute1", "verdict": "healthy"});
        let t = Format::Table
            .render(&v, || "compute1 healthy\n".into())
            .expect("table");
        assert_eq!(t, "compute1 healthy\n");
        let j = Format::Json.render(&v, String::new).expect("json");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&j).expect("parses"),
            v
        );
        let y = Format::Yaml.render(&v, String::new).expect("yaml");
        assert_eq!(
            serde_yaml_ng::from_str::<serde_json::Value>(&y).expect("parses"),
            v
        );
        let item = Format::Yaml.render_item(&v, String::new).expect("doc");
        assert!(item.starts_with("---\n"), "{item}");
        assert_eq!(
            Format::Json
                .render_item(&v, String::new)
                .expect("line")
                .lines()
                .count(),
            1
        );
    }

    /// Every command that prints data takes the same flags.
    #[test]
    fn every_data_command_takes_format_and_json() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let commands: [&[&str]; 7] = [
            &["nodes"],
            &["node", "compute1"],
            &["watch"],
            &["fence-check", "--config", "d.toml"],
            &["incidents", "--journal", "j.sqlite"],
            &["incident", "ID", "--journal", "j.sqlite"],
            &[
                "confirm-power-off",
                "compute1",
                "--operator",
                "a",
                "--reason",
                "r",
                "--token-file",
                "t",
            ],
        ];
        let format_of = |c: &Command| match c {
            Command::Nodes { client, .. }
            | Command::Node { client, .. }
            | Command::Watch { client, .. } => client.output.get(),
            Command::FenceCheck { output, .. }
            | Command::Incidents { output, .. }
            | Command::Incident { output, .. } => output.get(),
            Command::ConfirmPowerOff(a) => a.client.output.get(),
            other => panic!("not a data command: {other:?}"),
        };
        for args in commands {
            for (extra, want) in [
                (&[][..], Format::Table),
                (&["--format", "yaml"][..], Format::Yaml),
                (&["--format", "json"][..], Format::Json),
                (&["--json"][..], Format::Json),
            ] {
                let argv = ["vigil-decider"].iter().chain(args).chain(extra);
                let cli =
                    Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?} {extra:?}: {e}"));
                assert_eq!(format_of(&cli.command), want, "{args:?} {extra:?}");
            }
            let both = ["vigil-decider"]
                .iter()
                .chain(args)
                .chain(&["--json", "--format", "yaml"]);
            assert!(
                Cli::try_parse_from(both).is_err(),
                "{args:?}: --json with --format yaml"
            );
        }
    }
}
