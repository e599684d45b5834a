//! `user = "app"`, `"1000:1000"`, `"app:staff"` → numeric ids, resolved against the image's own
//! `/etc/passwd` and `/etc/group` (names mean what the image says they mean, not what the
//! host says). Pure: the caller passes the files' contents.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub user: IdOrName,
    pub group: Option<IdOrName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
}

fn id_or_name(s: &str, what: &str) -> Result<IdOrName, String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(IdOrName::Id)
            .map_err(|_| format!("{what} id {s} is too large"));
    }
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        Ok(IdOrName::Name(s.to_string()))
    } else {
        Err(format!("{s:?} is not a {what} name or number"))
    }
}

/// Parses `USER[:GROUP]` where each part is a name or a number.
pub fn parse_user_spec(s: &str) -> Result<UserSpec, String> {
    let mut parts = s.split(':');
    let user = parts.next().unwrap_or_default();
    let group = parts.next();
    if parts.next().is_some() {
        return Err(format!("{s:?}: expected USER or USER:GROUP"));
    }
    Ok(UserSpec {
        user: id_or_name(user, "user")?,
        group: group.map(|g| id_or_name(g, "group")).transpose()?,
    })
}

/// Resolves a spec against passwd/group file contents. A numeric uid without a group takes
/// the gid from passwd when the uid is listed there, else the same number (as runc and Docker do).
pub fn resolve_user(spec: &UserSpec, passwd: &str, group: &str) -> Result<ResolvedUser, String> {
    let passwd_rows: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .collect();
    let (uid, passwd_gid) = match &spec.user {
        IdOrName::Id(uid) => {
            let gid = passwd_rows
                .iter()
                .find(|r| r.len() > 3 && r[2].parse() == Ok(*uid))
                .and_then(|r| r[3].parse().ok());
            (*uid, gid)
        }
        IdOrName::Name(name) => {
            let row = passwd_rows
                .iter()
                .find(|r| r.len() > 3 && r[0] == name)
                .ok_or_else(|| format!("user {name:?} is not in the image's /etc/passwd"))?;
            let uid = row[2]
                .parse()
                .map_err(|_| format!("bad uid for {name:?} in the image's /etc/passwd"))?;
            (uid, row[3].parse().ok())
        }
    };
    let gid = match &spec.group {
        None => passwd_gid.unwrap_or(uid),
        Some(IdOrName::Id(gid)) => *gid,
        Some(IdOrName::Name(name)) => group
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|r| r.len() > 2 && r[0] == name)
            .and_then(|r| r[2].parse().ok())
            .ok_or_else(|| format!("group {name:?} is not in the image's /etc/group"))?,
    };
    Ok(ResolvedUser { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\napp:x:1001:\n";

    fn res(s: &str) -> Result<ResolvedUser, String> {
        resolve_user(&parse_user_spec(s)?, PASSWD, GROUP)
    }

    #[test]
    fn resolves_names_and_numbers() {
        assert_eq!(
            res("app"),
            Ok(ResolvedUser {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(res("app:staff"), Ok(ResolvedUser { uid: 1000, gid: 50 }));
        assert_eq!(
            res("1000"),
            Ok(ResolvedUser {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(
            res("1234"),
            Ok(ResolvedUser {
                uid: 1234,
                gid: 1234
            })
        );
        assert_eq!(
            res("1000:1000"),
            Ok(ResolvedUser {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(res("root"), Ok(ResolvedUser { uid: 0, gid: 0 }));
    }

    #[test]
    fn refuses_unknown_or_malformed() {
        assert!(res("nobody")
            .unwrap_err()
            .contains("not in the image's /etc/passwd"));
        assert!(res("app:wheel").unwrap_err().contains("/etc/group"));
        assert!(parse_user_spec("a:b:c").is_err());
        assert!(parse_user_spec("").is_err());
        assert!(parse_user_spec("a b").is_err());
        assert!(parse_user_spec("99999999999").is_err());
    }
}
