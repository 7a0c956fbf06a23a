//! Users, groups and machines as a host knows them: what lets a restore on
//! another host give an app to the same user by name, and tell the host
//! that made a backup from a new machine given its name.

use hop3_proto::layout::OwnerNames;
use nix::unistd::{Gid, Group, Uid, User};

/// The names of `uid` and `gid` on this host, where they have one.
/// Blocking (NSS may ask a directory service).
pub fn names_of(uid: u32, gid: u32) -> OwnerNames {
    OwnerNames {
        user: User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name),
        group: Group::from_gid(Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name),
    }
}

/// The `(uid, gid)` the names `names` have on this host: both must be
/// known (a user without its group, or the reverse, is not the same owner).
/// Blocking.
pub fn ids_of(names: &OwnerNames) -> Option<(u32, u32)> {
    let user = User::from_name(names.user.as_deref()?).ok()??;
    let group = Group::from_name(names.group.as_deref()?).ok()??;
    Some((user.uid.as_raw(), group.gid.as_raw()))
}

/// This machine's id (`/etc/machine-id`), if it has one. Blocking.
pub fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
