//! `ferry vpg resolve` and `ferry vpg diverged`: settling a split brain, and the diverged
//! writes kept for salvage.

use hyper::Method;

use super::client::Client;
use ferry_agent::diverged::DivergedSet;
use ferry_agent::failover::resolve::{Keep, ResolveRequest, Resolved};
use ferry_agent::size::{human, parse_size, utc};

pub(super) async fn resolve(
    c: &Client,
    vpg: &str,
    keep: &str,
    salvage_max: Option<&str>,
    discard: bool,
) -> Result<(), String> {
    let req = ResolveRequest {
        keep: if keep == "here" { Keep::Here } else { Keep::Peer },
        salvage_max: salvage_max.map(parse_size).transpose()?,
        discard,
    };
    let r: Resolved = c
        .call(Method::POST, &format!("/v1/failover/{vpg}/resolve"), Some(&req))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("empty answer")?;
    println!("VPG {vpg}, split brain since epoch {}: {}", r.epoch, r.summary);
    if let Some(d) = &r.diverged {
        print_set(d);
    }
    Ok(())
}

pub(super) async fn diverged(
    c: &Client,
    vpg: &str,
    delete: bool,
    epoch: Option<u64>,
    json: bool,
) -> Result<(), String> {
    let path = match (delete, epoch) {
        (true, Some(e)) => format!("/v1/failover/{vpg}/diverged?epoch={e}"),
        _ => format!("/v1/failover/{vpg}/diverged"),
    };
    let method = if delete { Method::DELETE } else { Method::GET };
    let sets: Vec<DivergedSet> = c
        .call(method, &path, None::<&()>)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&sets).map_err(|e| e.to_string())?);
        return Ok(());
    }
    if delete {
        for s in &sets {
            println!(
                "deleted: diverged writes of {vpg} from epoch {} ({})",
                s.epoch,
                human(s.bytes)
            );
        }
        return Ok(());
    }
    if sets.is_empty() {
        println!("no diverged writes of {vpg} are kept here");
    }
    for s in &sets {
        print_set(s);
    }
    Ok(())
}

fn print_set(s: &DivergedSet) {
    println!(
        "diverged writes of {} from epoch {}, kept {}: {}",
        s.vpg,
        s.epoch,
        utc(s.made_unix_ms),
        s.origin
    );
    println!("  {} in {}", human(s.bytes), s.dir.display());
    for v in &s.volumes {
        println!(
            "  {:<12} {:>10} in {:>5} region(s)  {}  export {}",
            v.name,
            human(v.bytes),
            v.regions.len(),
            v.file.display(),
            v.uri
        );
        for (off, len) in v.regions.iter().take(8) {
            println!("      at {off:>14}  {len:>10} bytes");
        }
        if v.regions.len() > 8 {
            println!("      … {} more (`--json` lists them all)", v.regions.len() - 8);
        }
    }
    println!(
        "  delete them with `ferry vpg diverged {} --delete --epoch {}`",
        s.vpg, s.epoch
    );
}
