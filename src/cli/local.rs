//! The commands that need no agent: pairing keys, the API token, completions and man
//! pages, and reading a journal file.

use std::path::PathBuf;

use clap::CommandFactory;

use super::args::{Cli, JournalCmd};

/// `ferry pair`: a new pairing key in a 0600 file, and what to do with it.
pub(super) fn pair(path: &std::path::Path, force: bool) -> Result<(), String> {
    use ferry_proto::pairing;
    let key = pairing::new_key().map_err(|e| e.to_string())?;
    pairing::write_key(path, &key, force).map_err(|e| e.to_string())?;
    println!(
        "wrote a new pairing key to {} (mode 0600)\n\
         copy it to the peer host (e.g. scp {} PEER:/etc/ferry/): both agents need the same key;\n\
         whoever holds it can replicate to or from this agent: keep it private",
        path.display(),
        path.display()
    );
    Ok(())
}

/// `ferry api token`: a new bearer token for the API over TCP.
pub(super) fn api_token(path: PathBuf, print: bool) -> Result<(), String> {
    let token = ferry_agent::api::auth::write_token_file(&path)
        .map_err(|e| format!("cannot write the API token to {}: {e}", path.display()))?;
    println!(
        "wrote a new API token to {} (mode 0600); a running agent uses it at once, and the old one stops working.\n\
         clients send it as `Authorization: Bearer TOKEN` (e.g. curl -H \"Authorization: Bearer $(cat {})\" …)",
        path.display(),
        path.display()
    );
    if print {
        println!("{token}");
    }
    Ok(())
}

/// `ferry man DIR`: ferry.1, and ferry-CMD[-SUB].1 for every command, from the CLI's
/// definition.
pub(super) fn man_pages(dir: &std::path::Path) -> Result<(), String> {
    fn write(dir: &std::path::Path, name: &str, cmd: clap::Command, n: &mut usize) -> Result<(), String> {
        let cmd = cmd.name(name.to_string());
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut out)
            .map_err(|e| format!("cannot render the man page of {name}: {e}"))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        *n += 1;
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            write(dir, &format!("{name}-{}", sub.get_name()), sub.clone(), n)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut n = 0;
    write(dir, "ferry", cmd, &mut n)?;
    println!("wrote {n} man pages to {}", dir.display());
    Ok(())
}

pub(super) fn run_journal(cmd: JournalCmd) -> Result<(), String> {
    let (path, records, json) = match &cmd {
        JournalCmd::Dump { path, json } => (path, true, *json),
        JournalCmd::Check { path, json } => (path, false, *json),
        JournalCmd::Tail { .. } => unreachable!("tail asks the agent"),
    };
    let report = crate::cli::journal_tool::inspect(path, records)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json).expect("serialises"));
        return if report.clean {
            Ok(())
        } else {
            Err(format!("journal {} is damaged", path.display()))
        };
    }
    print!("{}", report.text);
    if !report.clean {
        return Err(format!("journal {} is damaged (see above)", path.display()));
    }
    if let JournalCmd::Check { .. } = cmd {
        println!("journal {}: ok", path.display());
    }
    Ok(())
}
