//! `shim image`: the content store by hand. `pull` resolves a reference, downloads what is
//! missing and unpacks the rootfs (what `shim start` would do first); `ls` lists what was
//! pulled; `rm` forgets one image; `prune` removes everything that neither the current nor
//! the previous revision of a service, nor a running instance, needs.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::config::Definitions;
use crate::error::BadInput;
use crate::host::dirs::Dirs;
use crate::host::state::StateStore;
use crate::image::progress::{self, human_bytes};
use crate::image::{ImageRef, ImageStore, InUse};

/// Pull, list and remove images in shim's content store.
///
/// Example: shim image pull registry.example.com/team/app:279d9035886d
#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    Pull(PullArgs),
    #[command(alias = "list")]
    Ls(LsArgs),
    Rm(RmArgs),
    Prune(PruneArgs),
}

/// Download an image into the content store and unpack its rootfs.
///
/// REFERENCE is oci:/path/layout[:tag], oci-archive:/path/image.tar[:tag], or
/// [docker://]host[:port]/repository[:tag][@sha256:…]; or give --id and --revision to pull
/// what `shim start` would run. Registries listed in [shim] insecure_registries are spoken
/// to over plain HTTP; credentials come from [shim] auth_file (default /etc/shim/auth.json).
///
/// Example: shim image pull --id billing_app --revision 279d9035886d
#[derive(Args, Debug)]
pub struct PullArgs {
    /// The image to pull.
    #[arg(required_unless_present = "id", conflicts_with = "id")]
    pub reference: Option<String>,
    /// Pull the image of this service (with --revision).
    #[arg(long, requires = "revision")]
    pub id: Option<String>,
    /// The revision filling {revision} in the service's image.
    #[arg(long, requires = "id")]
    pub revision: Option<String>,
    /// Only download the blobs; do not unpack the rootfs.
    #[arg(long)]
    pub no_unpack: bool,
}

/// List pulled images: reference, manifest digest, size, whether the rootfs is unpacked.
///
/// Example: shim image ls --json
#[derive(Args, Debug)]
pub struct LsArgs {
    /// Machine-readable output: a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Forget images and remove their blobs and rootfs, except what is still used.
///
/// Keeps what another pulled image shares or a running instance uses.
///
/// Example: shim image rm oci:/var/lib/images/billing:0f3a1c2b9d8e
#[derive(Args, Debug)]
pub struct RmArgs {
    /// References as `shim image ls` shows them.
    #[arg(required = true)]
    pub references: Vec<String>,
}

/// Remove every image, blob and rootfs that nothing needs.
///
/// Kept: what the current or previous revision of a defined service, a running instance, or
/// a pull younger than --grace needs.
///
/// Example: shim image prune --dry-run
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Only show what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep whatever was pulled or unpacked more recently than this (a `shim start` may be
    /// between its pull and its units).
    #[arg(long, default_value = "10m")]
    pub grace: String,
}

pub fn run(host: &crate::host::Host, config: &Path, args: ImageArgs) -> Result<()> {
    let dirs = host.dirs.clone();
    match args.command {
        ImageCommand::Pull(a) => pull(config, &dirs, a),
        ImageCommand::Ls(a) => ls(config, &dirs, a),
        ImageCommand::Rm(a) => rm(config, &dirs, a),
        ImageCommand::Prune(a) => prune(config, &dirs, a),
    }
}

/// The definitions if there are any: the image commands work on a host without services
/// (pre-pulling before the first deploy), with default registry settings.
fn definitions(config: &Path) -> Result<Definitions> {
    if config.exists() {
        Ok(crate::config::load(config)?)
    } else {
        Ok(Definitions::default())
    }
}

fn store(defs: &Definitions, dirs: &Dirs) -> ImageStore {
    ImageStore::with_settings(dirs.images(), defs.settings.registry())
        .with_progress(progress::auto())
}

fn parse_ref(s: &str) -> Result<ImageRef> {
    Ok(ImageRef::parse(s)?)
}

fn pull(config: &Path, dirs: &Dirs, a: PullArgs) -> Result<()> {
    let defs = definitions(config)?;
    let reference = match (&a.reference, &a.id, &a.revision) {
        (Some(r), _, _) => r.clone(),
        (None, Some(id), Some(rev)) => {
            crate::plan::validate_revision(rev)
                .map_err(|m| BadInput(format!("--revision: {m}")))?;
            defs.service(id)?.image_for(rev)?
        }
        _ => return Err(BadInput("give a reference, or --id and --revision".into()).into()),
    };
    let r = parse_ref(&reference)?;
    let store = store(&defs, dirs);
    let started = Instant::now();
    let img = store.resolve(&r).with_context(|| format!("pulling {r}"))?;
    let size: u64 = img.layers.iter().map(|l| l.size).sum();
    let where_ = if a.no_unpack {
        store
            .fetch_layers(&img)
            .with_context(|| format!("pulling {r}"))?;
        "layers in the content store".to_string()
    } else {
        let here = store
            .planned_layers(&img)
            .iter()
            .filter(|d| d.is_dir())
            .count();
        let dirs = store
            .ensure_layers(&img)
            .with_context(|| format!("unpacking {r}"))?;
        let shown: Vec<String> = dirs
            .iter()
            .filter_map(|d| d.file_name())
            .map(|n| n.to_string_lossy().chars().take(12).collect())
            .collect();
        format!(
            "{} layers unpacked now, {here} already here, in {} ({})",
            dirs.len() - here,
            dirs.last()
                .and_then(|d| d.parent())
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            shown.join(" ")
        )
    };
    let n = img.layers.len();
    println!(
        "pulled {r} {} ({n} layer{}, {}) in {:.1}s; {where_}",
        img.manifest_digest,
        if n == 1 { "" } else { "s" },
        human_bytes(size),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One row of `shim image ls`, as shown and as JSON.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    reference: String,
    manifest: String,
    size: u64,
    stored: u64,
    complete: bool,
    unpacked: bool,
    /// Unpacked layer directories, and their disk use: only this image's, and shared with
    /// other recorded images.
    layers: usize,
    unique_bytes: u64,
    shared_bytes: u64,
    /// The layer directories, lowest first (JSON only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    layer_dirs: Vec<std::path::PathBuf>,
    resolved_at: u64,
}

fn render_table(rows: &[Row]) -> String {
    let head = [
        "REFERENCE",
        "MANIFEST",
        "SIZE",
        "BLOBS",
        "UNPACKED",
        "UNIQUE",
        "SHARED",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.reference.clone(),
                short_digest(&r.manifest),
                human_bytes(r.size),
                if r.reference.starts_with("oci:") {
                    "in layout"
                } else if r.complete {
                    "complete"
                } else {
                    "partial"
                }
                .to_string(),
                match (r.unpacked, r.layers) {
                    (false, _) => "no".to_string(),
                    (true, 0) => "rootfs".to_string(),
                    (true, n) => format!("{n} layer{}", if n == 1 { "" } else { "s" }),
                },
                human_bytes(r.unique_bytes),
                human_bytes(r.shared_bytes),
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for c in &cells {
        for (w, v) in widths.iter_mut().zip(c) {
            *w = (*w).max(v.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |vals: &[&str]| {
        let parts: Vec<String> = vals
            .iter()
            .zip(widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&head);
    for c in &cells {
        line(&c.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// `sha256:` and the first 12 hex digits, like docker's image ids.
fn short_digest(d: &str) -> String {
    d.get(..19).unwrap_or(d).to_string()
}

fn ls(config: &Path, dirs: &Dirs, a: LsArgs) -> Result<()> {
    let defs = definitions(config)?;
    let rows: Vec<Row> = store(&defs, dirs)
        .list()?
        .into_iter()
        .map(|i| Row {
            size: i.record.layers_size,
            stored: i.stored_bytes,
            complete: i.complete,
            unpacked: i.unpacked,
            layers: i.layers,
            unique_bytes: i.unique_bytes,
            shared_bytes: i.shared_bytes,
            layer_dirs: i.layer_dirs,
            resolved_at: i.record.resolved_at,
            reference: i.record.reference,
            manifest: i.record.manifest,
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render_table(&rows));
    }
    Ok(())
}

fn rm(config: &Path, dirs: &Dirs, a: RmArgs) -> Result<()> {
    let defs = definitions(config)?;
    let store = store(&defs, dirs);
    let refs = a
        .references
        .iter()
        .map(|s| parse_ref(s))
        .collect::<Result<Vec<_>>>()?;
    let in_use = InUse::current(&store)?;
    for r in refs {
        let rep = store.remove(&r, &in_use)?;
        let rootfs = match (&rep.rootfs_kept, rep.rootfs_removed) {
            (Some(why), _) => format!("rootfs kept ({why})"),
            (None, true) => "rootfs removed".to_string(),
            (None, false) => "no rootfs".to_string(),
        };
        let layers = if rep.layers_kept > 0 {
            format!(
                ", {} layers removed, {} kept (other images or running instances use them)",
                rep.layers_removed, rep.layers_kept
            )
        } else {
            format!(", {} layers removed", rep.layers_removed)
        };
        println!(
            "removed {}: {} blobs, {} freed, {rootfs}{layers}",
            rep.reference,
            rep.blobs_removed,
            human_bytes(rep.bytes_freed)
        );
    }
    Ok(())
}

/// The manifest digests the recorded deployments of every service on this host pin
/// (current, previous, being rolled out), defined or not.
/// Every state file must be read: one that is skipped (damaged, or written by a newer shim)
/// could pin a manifest that prune would then remove.
fn deployed_manifests(dirs: &Dirs) -> Result<BTreeSet<String>> {
    Ok(StateStore::new(&dirs.state)
        .load_every()
        .context("nothing was pruned: every deployment record must be read to know what it pins")?
        .into_iter()
        .flat_map(|(_, st)| {
            let a = st.upgrading.and_then(|a| a.deployment);
            [st.deployment, st.previous_deployment, a]
        })
        .flatten()
        .map(|d| d.manifest_digest)
        .collect())
}

/// The images the current and previous revision of every defined service use.
fn deployed_images(defs: &Definitions, dirs: &Dirs) -> Result<(Vec<ImageRef>, Vec<String>)> {
    let states = StateStore::new(&dirs.state);
    let mut keep = BTreeSet::new();
    let mut notes = Vec::new();
    for (id, svc) in &defs.services {
        let st = states.load(id.as_str())?;
        for rev in [&st.current, &st.previous].into_iter().flatten() {
            match svc
                .image_for(rev)
                .map_err(|e| e.to_string())
                .and_then(|s| ImageRef::parse(&s).map_err(|e| e.to_string()))
            {
                Ok(r) => {
                    keep.insert(r);
                }
                Err(e) => notes.push(format!("{id} revision {rev}: {e}")),
            }
        }
    }
    Ok((keep.into_iter().collect(), notes))
}

fn prune(config: &Path, dirs: &Dirs, a: PruneArgs) -> Result<()> {
    let grace = crate::config::parse_duration(&a.grace)
        .map_err(|m| BadInput(format!("--grace {:?}: {m}", a.grace)))?;
    let defs = definitions(config)?;
    let store = store(&defs, dirs);
    let (keep, notes) = deployed_images(&defs, dirs)?;
    for n in &notes {
        eprintln!("shim: warning: {n}; its image cannot be identified and is not kept");
    }
    let in_use = InUse::current(&store)?;
    let rep = store.prune(&keep, &deployed_manifests(dirs)?, &in_use, grace, a.dry_run)?;
    let verb = if a.dry_run { "would remove" } else { "removed" };
    for r in &rep.records_removed {
        println!("{verb} image {r}");
    }
    for d in &rep.rootfs_removed {
        println!("{verb} rootfs {d}");
    }
    for d in &rep.layers_removed {
        println!("{verb} layer {d}");
    }
    for d in &rep.layers_in_use {
        println!("kept layer {d} (mounted by a running instance)");
    }
    for d in &rep.rootfs_in_use {
        println!("kept rootfs {d} (mounted by a running instance)");
    }
    for r in &rep.unrecorded {
        println!("kept nothing for {r}: never pulled on this host (or its record was lost)");
    }
    println!(
        "{verb} {} blobs, {} rootfs, {} layers ({} in all); kept {} images{}",
        rep.blobs_removed,
        rep.rootfs_removed.len(),
        rep.layers_removed.len(),
        human_bytes(rep.bytes_freed),
        rep.records_kept.len(),
        if grace > Duration::ZERO {
            format!(" (including any pulled in the last {})", a.grace)
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let rows = vec![
            Row {
                reference: "127.0.0.1:5000/team/app:rev1".into(),
                manifest: format!("sha256:{}", "ab".repeat(32)),
                size: 12_345_678,
                stored: 12_345_678,
                complete: true,
                unpacked: true,
                layers: 3,
                unique_bytes: 1_500,
                shared_bytes: 230_000_000,
                layer_dirs: Vec::new(),
                resolved_at: 0,
            },
            Row {
                reference: "oci:/srv/img:v2".into(),
                manifest: format!("sha256:{}", "cd".repeat(32)),
                size: 999,
                stored: 0,
                complete: false,
                unpacked: false,
                layers: 0,
                unique_bytes: 0,
                shared_bytes: 0,
                layer_dirs: Vec::new(),
                resolved_at: 0,
            },
        ];
        assert_eq!(
            render_table(&rows),
            "REFERENCE                     MANIFEST             SIZE     BLOBS      UNPACKED  UNIQUE  SHARED\n\
             127.0.0.1:5000/team/app:rev1  sha256:abababababab  12.3 MB  complete   3 layers  1.5 kB  230.0 MB\n\
             oci:/srv/img:v2               sha256:cdcdcdcdcdcd  999 B    in layout  no        0 B     0 B\n"
        );
    }
}
