//! Starting the workload process.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use ateom_init::config::{RlimitResource, WorkloadConfig};

use super::error::InitError;

/// Starts the workload described by `config` and returns its pid.
///
/// In the child, before `execve`: a new session (`setsid`), the rlimits, the umask, the
/// no-new-privileges flag, then supplementary groups, gid and uid (in that order, while still
/// root). stdin is `/dev/null`; stdout and stderr are `/dev/console` (PID 1's own stderr if
/// the console cannot be opened).
pub fn spawn(config: &WorkloadConfig) -> Result<u32, InitError> {
    let p = &config.process;
    let program = p.resolve_program(is_executable)?;
    let spawn_error = |source: std::io::Error| InitError::Spawn {
        program: program.display().to_string(),
        cwd: p.cwd.clone(),
        uid: p.user.uid,
        gid: p.user.gid,
        source,
    };
    if !Path::new(&p.cwd).is_dir() {
        return Err(spawn_error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("working directory {} does not exist", p.cwd),
        )));
    }

    let mut command = Command::new(&program);
    command
        .arg0(&p.args[0])
        .args(&p.args[1..])
        .env_clear()
        .envs(p.env_pairs())
        .current_dir(&p.cwd)
        .stdin(Stdio::null());
    match console() {
        Ok((out, err)) => {
            command.stdout(out).stderr(err);
        }
        Err(e) => {
            say!("warning: opening /dev/console for the workload: {e}; it inherits ateom-init's stderr");
            command.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        }
    }

    // Everything the child needs, computed before fork: the closure below runs between fork
    // and exec and must not allocate.
    let rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)> = p
        .rlimits
        .iter()
        .filter_map(|l| {
            let resource = RlimitResource::from_oci_name(&l.kind)?;
            Some((resource.to_libc(), libc::rlimit { rlim_cur: l.soft, rlim_max: l.hard }))
        })
        .collect();
    let groups: Vec<libc::gid_t> = p.user.additional_gids.clone();
    let (uid, gid, umask, no_new_privs) = (p.user.uid, p.user.gid, p.user.umask, p.no_new_privileges);
    // SAFETY: the closure only makes async-signal-safe system calls on data prepared above.
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            check(libc::setsid())?;
            for (resource, limit) in &rlimits {
                check(libc::setrlimit(*resource, limit))?;
            }
            if let Some(mask) = umask {
                libc::umask(mask as libc::mode_t);
            }
            if no_new_privs {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            Ok(())
        });
    }
    let child = command.spawn().map_err(spawn_error)?;
    // The child is reaped by PID 1's waitpid(-1) loop, not through `child`.
    Ok(child.id())
}

fn console() -> std::io::Result<(File, File)> {
    let out = OpenOptions::new().write(true).custom_flags(libc::O_NOCTTY).open("/dev/console")?;
    let err = out.try_clone()?;
    Ok((out, err))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
