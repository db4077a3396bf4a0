//! Project automation: `cargo xtask codegen [--check]`,
//! `cargo xtask bench [--quick] [--only NAME,NAME…]`.

mod bench;
mod codegen;
mod quirks;

use std::process::{Command, ExitCode};

/// Why an xtask failed; printed as its message.
#[derive(Debug, thiserror::Error)]
enum XtaskError {
    #[error(
        "usage: cargo xtask codegen [--check] | cargo xtask bench [--quick] [--only NAME,NAME…]"
    )]
    Usage,
    #[error(transparent)]
    Codegen(#[from] codegen::CodegenError),
    #[error("cannot run cargo: {0}")]
    RunCargo(#[source] std::io::Error),
    /// The main binary said why on stderr.
    #[error("writing the JSON schemas failed (see above)")]
    Schemas,
    #[error(transparent)]
    BenchOptions(#[from] bench::OptionsError),
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["codegen"] => run_codegen(false),
        ["codegen", "--check"] => run_codegen(true),
        ["bench", rest @ ..] => bench::Options::parse(rest)
            .map_err(XtaskError::from)
            .and_then(|options| Ok(bench::run(options)?)),
        _ => Err(XtaskError::Usage),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The Docker bindings first, so a main crate that does not compile cannot
/// block regenerating them; then the JSON schemas derived from the main
/// crate's types, which only its own binary can write.
fn run_codegen(check: bool) -> Result<(), XtaskError> {
    codegen::generate_docker_bindings(check)?;
    write_schemas(check)
}

fn write_schemas(check: bool) -> Result<(), XtaskError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(codegen::project_root()).args([
        "run",
        "--quiet",
        "--bin",
        "oz-agent-worker",
        "--",
        "internal",
        "write-schemas",
        "api-specs",
    ]);
    if check {
        cmd.arg("--check");
    }
    let status = cmd.status().map_err(XtaskError::RunCargo)?;
    if status.success() {
        Ok(())
    } else {
        Err(XtaskError::Schemas)
    }
}

#[cfg(test)]
mod tests {
    /// `cargo test` catches bindings that drifted from the spec or the
    /// generator. (The JSON schemas have their own test in the main crate.)
    #[test]
    fn docker_bindings_are_fresh() {
        if let Err(e) = crate::codegen::generate_docker_bindings(true) {
            panic!("{e}");
        }
    }
}
