//! `serve`, `run`, `runs`, `api-keys`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {}
#[derive(Debug, clap::Args)]
pub struct RunArgs {}
#[derive(Debug, clap::Args)]
pub struct RunsArgs {}
#[derive(Debug, clap::Args)]
pub struct ApiKeysArgs {}

pub async fn serve(_a: ServeArgs) -> ExitCode {
    ExitCode::from(2)
}
pub async fn run(_a: RunArgs) -> ExitCode {
    ExitCode::from(2)
}
pub async fn runs(_a: RunsArgs) -> ExitCode {
    ExitCode::from(2)
}
pub async fn api_keys(_a: ApiKeysArgs) -> ExitCode {
    ExitCode::from(2)
}
