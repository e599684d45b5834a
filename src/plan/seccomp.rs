//! The system-call filter of a container, as `config.json` gives it to the runtime (pure).
//!
//! The default profile is the one container users expect: the one containers-common ships
//! (and podman applies), in Docker's profile format. That format says per rule which
//! architectures (`includes.arches`) and capabilities (`includes.caps`, `excludes.caps`)
//! it is for; the OCI format the runtime reads has none of that. So, as moby does it
//! (`profiles/seccomp/seccomp_linux.go`): a rule is kept when the container's architecture
//! is one it includes (or it names none) and not one it excludes, when the container holds
//! every capability it includes and none it excludes, and when the kernel is at least its
//! `minKernel`; the architectures are the host's and its sub-architectures from `archMap`.
//! A profile already in the OCI format (no `archMap`, no `includes`) is taken as it is.

use oci_spec::runtime::LinuxSeccomp;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Value>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// The container's side of the choice: its architecture (Rust's `std::env::consts::ARCH`),
/// the capabilities it holds, the host kernel's version.
pub struct Target<'a> {
    pub arch: &'a str,
    pub caps: &'a [String],
    pub kernel: (u32, u32),
}

/// Go's name (the profile's `arches`) and libseccomp's (`archMap`) of an architecture.
fn arch_names(arch: &str) -> Result<(&'static str, &'static str), String> {
    match arch {
        "x86_64" => Ok(("amd64", "SCMP_ARCH_X86_64")),
        "aarch64" => Ok(("arm64", "SCMP_ARCH_AARCH64")),
        "x86" => Ok(("386", "SCMP_ARCH_X86")),
        "arm" => Ok(("arm", "SCMP_ARCH_ARM")),
        "s390x" => Ok(("s390x", "SCMP_ARCH_S390X")),
        "powerpc64" => Ok(("ppc64le", "SCMP_ARCH_PPC64LE")),
        "riscv64" => Ok(("riscv64", "SCMP_ARCH_RISCV64")),
        other => Err(format!(
            "no seccomp architecture is known for {other}; set seccomp = \"unconfined\" or give a profile in the OCI format"
        )),
    }
}

fn kernel_at_least(min: &str, have: (u32, u32)) -> bool {
    let mut parts = min.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let want = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= want
}

fn keep(rule: &Rule, t: &Target<'_>, go_arch: &str) -> bool {
    let inc = &rule.includes;
    let exc = &rule.excludes;
    (inc.arches.is_empty() || inc.arches.iter().any(|a| a == go_arch))
        && !exc.arches.iter().any(|a| a == go_arch)
        && inc.caps.iter().all(|c| t.caps.contains(c))
        && !exc.caps.iter().any(|c| t.caps.contains(c))
        && inc
            .min_kernel
            .as_deref()
            .is_none_or(|m| kernel_at_least(m, t.kernel))
}

/// The OCI `linux.seccomp` of a profile (Docker's format or the OCI one) for `t`. An error
/// says what in the profile is wrong.
pub fn plan_seccomp(profile: &str, t: &Target<'_>) -> Result<LinuxSeccomp, String> {
    let p: DockerProfile =
        serde_json::from_str(profile).map_err(|e| format!("not a seccomp profile: {e}"))?;
    let (go_arch, scmp_arch) = arch_names(t.arch)?;
    let architectures: Vec<String> = if p.arch_map.is_empty() {
        p.architectures.clone()
    } else {
        p.arch_map
            .iter()
            .filter(|m| m.architecture == scmp_arch)
            .flat_map(|m| {
                std::iter::once(m.architecture.clone()).chain(m.sub_architectures.clone())
            })
            .collect()
    };
    let syscalls: Vec<Value> = p
        .syscalls
        .iter()
        .filter(|r| keep(r, t, go_arch))
        .map(|r| {
            let mut v = json!({ "names": r.names, "action": r.action });
            if let Some(e) = r.errno_ret {
                v["errnoRet"] = json!(e);
            }
            if let Some(a) = r.args.as_ref().filter(|a| !a.is_empty()) {
                v["args"] = json!(a);
            }
            v
        })
        .collect();
    let mut out = json!({
        "defaultAction": p.default_action,
        "architectures": architectures,
        "syscalls": syscalls,
    });
    if let Some(e) = p.default_errno_ret {
        out["defaultErrnoRet"] = json!(e);
    }
    if !p.flags.is_empty() {
        out["flags"] = json!(p.flags);
    }
    serde_json::from_value(out).map_err(|e| format!("not a seccomp profile the runtime reads: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"{
      "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
      "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
      ],
      "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "valueTwo": 0, "op": "SCMP_CMP_EQ"}], "includes": {}, "excludes": {}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["newfangled"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "9.1"}}
      ]
    }"#;

    fn names(s: &LinuxSeccomp) -> Vec<String> {
        s.syscalls()
            .iter()
            .flatten()
            .flat_map(|r| r.names().clone())
            .collect()
    }

    #[test]
    fn rules_are_chosen_for_the_architecture_capabilities_and_kernel() {
        let caps = vec!["CAP_KILL".to_string()];
        let t = Target {
            arch: "x86_64",
            caps: &caps,
            kernel: (6, 1),
        };
        let s = plan_seccomp(PROFILE, &t).unwrap();
        assert_eq!(
            names(&s),
            ["read", "write", "personality", "arch_prctl", "bpf"]
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 38);
        assert_eq!(
            v["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        // Without CAP_SYS_ADMIN, bpf is the EPERM rule; the argument filter is kept.
        assert_eq!(v["syscalls"][3]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(v["syscalls"][3]["errnoRet"], 1);
        assert_eq!(v["syscalls"][1]["args"][0]["op"], "SCMP_CMP_EQ");

        let admin = vec!["CAP_SYS_ADMIN".to_string()];
        let arm = Target {
            arch: "aarch64",
            caps: &admin,
            kernel: (9, 2),
        };
        let s = plan_seccomp(PROFILE, &arm).unwrap();
        assert_eq!(
            names(&s),
            [
                "read",
                "write",
                "personality",
                "arm_fadvise64_64",
                "bpf",
                "newfangled"
            ]
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap()["syscalls"][4]["action"],
            "SCMP_ACT_ALLOW"
        );
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let t = Target {
            arch: "x86_64",
            caps: &[],
            kernel: (6, 1),
        };
        assert!(plan_seccomp("{", &t)
            .unwrap_err()
            .contains("not a seccomp profile"));
        let e = plan_seccomp(r#"{"defaultAction": "SCMP_ACT_NOPE"}"#, &t).unwrap_err();
        assert!(e.contains("not a seccomp profile the runtime reads"), "{e}");
        let e = plan_seccomp(PROFILE, &Target { arch: "mips", ..t }).unwrap_err();
        assert!(e.contains("unconfined"), "{e}");
    }

    /// The profile Debian's golang-github-containers-common ships, where it is installed.
    #[test]
    fn the_containers_common_profile_converts() {
        let Ok(text) = std::fs::read_to_string("/usr/share/containers/seccomp.json") else {
            eprintln!("skipped: /usr/share/containers/seccomp.json is not installed here");
            return;
        };
        let caps: Vec<String> = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            .map(String::from)
            .to_vec();
        let t = Target {
            arch: "x86_64",
            caps: &caps,
            kernel: (6, 1),
        };
        let s = plan_seccomp(&text, &t).unwrap();
        let all = names(&s);
        assert!(all.contains(&"read".to_string()) && all.contains(&"arch_prctl".to_string()));
        assert!(!all.contains(&"arm_fadvise64_64".to_string()));
        assert!(all.len() > 300, "{}", all.len());
    }
}
