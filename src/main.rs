//! The `ferry` binary: the command line (argument parsing, the control API's client, and
//! rendering) over the agent library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
