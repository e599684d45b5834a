//! `mounts` and `secrets`: binds, volumes and tmpfs, each at its own absolute target.

use super::*;

/// `secrets`: files on the host (absolute `source`), each bind-mounted read-only at an
/// absolute `target` no other secret has, with an octal `mode` (default `0400`).
pub(super) fn validate_secrets(
    cx: &Ctx<'_>,
    prefix: &str,
    raw: &Option<Spanned<Vec<Spanned<RawSecret>>>>,
) -> Result<Vec<SecretFile>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    let mut out: Vec<SecretFile> = Vec::new();
    for (i, m) in list.get_ref().iter().enumerate() {
        let key = format!("{prefix}.secrets[{i}]");
        let r = m.get_ref();
        let bad_path = |p: &str| {
            !p.starts_with('/') || p == "/" || p.split('/').any(|c| c == ".." || c == ".")
        };
        let (source, target) = (r.source.get_ref(), r.target.get_ref());
        if bad_path(source) || source.ends_with('/') {
            let msg =
                format!("{source:?}: an absolute path of a file on this host, without . or ..");
            return mount_err(cx, &key, &r.source.span(), "source", msg);
        }
        if bad_path(target) || target.ends_with('/') {
            let msg =
                format!("{target:?}: an absolute path of a file in the container, without . or ..");
            return mount_err(cx, &key, &r.target.span(), "target", msg);
        }
        let mode = match &r.mode {
            None => 0o400,
            Some(v) => match u32::from_str_radix(v.get_ref(), 8)
                .ok()
                .filter(|m| *m <= 0o777)
            {
                Some(m) => m,
                None => {
                    let msg = format!(
                        "{:?}: an octal file mode such as \"0400\" or \"0440\"",
                        v.get_ref()
                    );
                    return mount_err(cx, &key, &v.span(), "mode", msg);
                }
            },
        };
        if out.iter().any(|o| o.target == *target) {
            return cx.err(&m.span(), key, format!("target {target:?} is given twice"));
        }
        out.push(SecretFile {
            source: PathBuf::from(source),
            target: target.clone(),
            mode,
        });
    }
    Ok(out)
}

/// Directories a mount must not expose: the host's root and shim's own state.
pub(super) const FORBIDDEN_SOURCES: [&str; 3] = ["/", "/var/lib/shim", "/run/shim"];

/// `mounts`: each a bind (an absolute `source` that is not `/` nor shim's state), a volume
/// (a name) or a tmpfs (`size`, `mode`), at an absolute `target` no other mount has.
pub(super) fn validate_mounts(
    cx: &Ctx<'_>,
    prefix: &str,
    raw: &Option<Spanned<Vec<Spanned<RawMount>>>>,
) -> Result<Vec<MountDef>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    let mut out: Vec<MountDef> = Vec::new();
    for (i, m) in list.get_ref().iter().enumerate() {
        let key = format!("{prefix}.mounts[{i}]");
        let def = validate_mount(cx, &key, m)?;
        if out.iter().any(|o| o.target() == def.target()) {
            return cx.err(
                &m.span(),
                key,
                format!("target {:?} is mounted twice", def.target()),
            );
        }
        out.push(def);
    }
    Ok(out)
}

/// An error about `key.what` of a mount.
pub(super) fn mount_err<T>(
    cx: &Ctx<'_>,
    key: &str,
    span: &std::ops::Range<usize>,
    what: &str,
    msg: String,
) -> Result<T, ConfigError> {
    cx.err(span, format!("{key}.{what}"), msg)
}

pub(super) fn validate_mount(
    cx: &Ctx<'_>,
    key: &str,
    m: &Spanned<RawMount>,
) -> Result<MountDef, ConfigError> {
    let r = m.get_ref();
    let target = r.target.get_ref().clone();
    if !target.starts_with('/') || target == "/" || target.split('/').any(|c| c == ".." || c == ".")
    {
        let msg =
            format!("{target:?}: an absolute path in the container, not / and without . or ..");
        return mount_err(cx, key, &r.target.span(), "target", msg);
    }
    let typ = r.typ.get_ref().as_str();
    let source = |want: &str| match &r.source {
        Some(s) => Ok(s),
        None => cx.err(
            &m.span(),
            format!("{key}.source"),
            format!("missing: a {typ} mount needs a source ({want})"),
        ),
    };
    if typ != "tmpfs" {
        for (k, v) in [("size", &r.size), ("mode", &r.mode)] {
            if let Some(v) = v {
                let msg = format!("only for a tmpfs mount, not a {typ} one");
                return mount_err(cx, key, &v.span(), k, msg);
            }
        }
    }
    let read_only = r.read_only.unwrap_or(false);
    match typ {
        "bind" => {
            let s = source("an absolute host path")?;
            let source = validate_bind_source(cx, key, s)?;
            Ok(MountDef::Bind {
                source,
                target,
                read_only,
            })
        }
        "volume" => {
            let s = source("a name")?;
            Ident::parse(s.get_ref())
                .or_else(|e| mount_err(cx, key, &s.span(), "source", format!("volume name {e}")))?;
            let source = s.get_ref().clone();
            Ok(MountDef::Volume {
                source,
                target,
                read_only,
            })
        }
        "tmpfs" => validate_tmpfs(cx, key, r, target),
        other => {
            let msg = format!("{other:?}: use \"bind\", \"volume\" or \"tmpfs\"");
            mount_err(cx, key, &r.typ.span(), "type", msg)
        }
    }
}

/// A bind mount's source: an absolute host path, not `/` nor shim's own state.
pub(super) fn validate_bind_source(
    cx: &Ctx<'_>,
    key: &str,
    s: &Spanned<String>,
) -> Result<PathBuf, ConfigError> {
    let src = s.get_ref();
    let norm = src.trim_end_matches('/');
    let forbidden = FORBIDDEN_SOURCES.iter().any(|f| {
        let f = f.trim_end_matches('/');
        norm.is_empty() || norm == f || (!f.is_empty() && norm.starts_with(&format!("{f}/")))
    });
    if !src.starts_with('/') || src.split('/').any(|c| c == "..") || forbidden {
        let msg = format!(
            "{src:?}: an absolute host path, not / and not under /var/lib/shim or /run/shim"
        );
        return mount_err(cx, key, &s.span(), "source", msg);
    }
    Ok(PathBuf::from(src))
}

/// A tmpfs mount: no source, a `size` of at least 4K, an octal `mode` (1777 by default).
pub(super) fn validate_tmpfs(
    cx: &Ctx<'_>,
    key: &str,
    r: &RawMount,
    target: String,
) -> Result<MountDef, ConfigError> {
    if let Some(s) = &r.source {
        return mount_err(
            cx,
            key,
            &s.span(),
            "source",
            "a tmpfs mount has no source".into(),
        );
    }
    let size = match &r.size {
        None => None,
        Some(v) => match crate::config::parse_bytes(v.get_ref()).filter(|b| *b >= 4096) {
            Some(b) => Some(b),
            None => {
                let msg = format!(
                    "{:?}: bytes with K, M, G (powers of 1024), at least 4K",
                    v.get_ref()
                );
                return mount_err(cx, key, &v.span(), "size", msg);
            }
        },
    };
    let mode = match &r.mode {
        None => 0o1777,
        Some(v) => match u32::from_str_radix(v.get_ref(), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
        {
            Some(m) => m,
            None => {
                let msg = format!(
                    "{:?}: an octal mode such as \"1777\" or \"0700\"",
                    v.get_ref()
                );
                return mount_err(cx, key, &v.span(), "mode", msg);
            }
        },
    };
    Ok(MountDef::Tmpfs { target, size, mode })
}
