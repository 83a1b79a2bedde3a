//! The `ferry` binary: everything is in `ferry_agent::cli`.

fn main() -> std::process::ExitCode {
    ferry_agent::cli::main()
}
