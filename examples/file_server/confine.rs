//! Opening a requested path beneath the root, and nowhere else.
//!
//! The root is held as a directory descriptor, and every request is resolved by the kernel
//! relative to it, in the same system call that opens the file: there is no moment between
//! a check and an open that a rename or a new symlink could use. Two ways:
//!
//! - **beneath** (Linux 5.6+): `openat2(root, path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
//!   Symlinks are followed as long as every step stays under the root; a `..`, an absolute
//!   symlink or one that leads out fails with EXDEV, a /proc magic link with ELOOP.
//! - **walk** (the fallback where openat2 is missing or filtered): one `openat` per
//!   component from the root's descriptor, each with `O_NOFOLLOW`, refusing every symlink.
//!
//! In both, a file is first opened `O_PATH` (which opens nothing: no device driver runs, a
//! FIFO does not block) to check that it is a regular file, then opened for reading
//! (`O_NONBLOCK | O_NOCTTY`), confined the same way, and checked again.

use rustix::fs::{FileType, Mode, OFlags, fstat, openat};
use rustix::io::Errno;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Flags that look at a file without opening it: `O_PATH` (no driver runs, a FIFO does not
/// block). Elsewhere than Linux, a plain non-blocking read-only open.
#[cfg(any(target_os = "linux", target_os = "android"))]
const LOOK: OFlags = OFlags::PATH;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const LOOK: OFlags = OFlags::RDONLY.union(OFlags::NONBLOCK).union(OFlags::NOCTTY);

/// How requests are resolved under the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolve {
    /// openat2 with RESOLVE_BENEATH (symlinks inside the root are followed).
    Beneath,
    /// openat per component with O_NOFOLLOW (no symlinks at all).
    Walk,
}

impl std::str::FromStr for Resolve {
    type Err = String;
    fn from_str(s: &str) -> Result<Resolve, String> {
        match s {
            "beneath" => Ok(Resolve::Beneath),
            "walk" => Ok(Resolve::Walk),
            _ => Err(format!("{s:?} is neither beneath nor walk")),
        }
    }
}

/// The served directory, held open.
pub struct Root {
    dir: OwnedFd,
    pub resolve: Resolve,
}

/// Why a request was refused: the reason sent back after `ERR `.
pub type Refusal = &'static str;

impl Root {
    /// Opens `path` as the root. `want` forces a way of resolving; by default `Beneath`
    /// where the kernel offers openat2, else `Walk`.
    pub fn open(path: &Path, want: Option<Resolve>) -> std::io::Result<Root> {
        let flags = LOOK | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = openat(rustix::fs::CWD, path, flags, Mode::empty())?;
        let resolve = match want {
            Some(r) => r,
            None if beneath_works(&dir) => Resolve::Beneath,
            None => Resolve::Walk,
        };
        if resolve == Resolve::Beneath && !beneath_works(&dir) {
            return Err(std::io::Error::other(
                "openat2 with RESOLVE_BENEATH is not available",
            ));
        }
        Ok(Root { dir, resolve })
    }

    /// Opens `rel` (the bytes after `GET `) for reading if it names a regular file beneath
    /// the root; returns it with its size.
    pub fn open_file(&self, rel: &[u8]) -> Result<(File, u64), Refusal> {
        if rel.is_empty() {
            return Err("bad request");
        }
        if rel[0] == b'/' || rel.split(|&b| b == b'/').any(|c| c == b"..") {
            return Err("forbidden"); // absolute, or a `..` (even one that stays inside)
        }
        if rel.contains(&0) {
            return Err("cannot open"); // no path has a NUL in it
        }
        let open = |flags| match self.resolve {
            Resolve::Beneath => beneath(&self.dir, rel, flags),
            Resolve::Walk => walk(&self.dir, rel, flags),
        };
        // Look first without opening: O_PATH runs no driver and does not block on a FIFO.
        let probe = open(LOOK).map_err(refusal)?;
        regular(&probe)?;
        drop(probe);
        let fd = open(OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY).map_err(refusal)?;
        // Whatever was renamed in between, this is what we opened, and it is beneath the root.
        let size = regular(&fd)?;
        Ok((File::from(fd), size))
    }
}

/// The size of `fd` if it is a regular file.
fn regular(fd: &OwnedFd) -> Result<u64, Refusal> {
    let st = fstat(fd).map_err(refusal)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(st.st_size as u64),
        _ => Err("not a regular file"),
    }
}

/// The reason to give for an error from opening.
fn refusal(e: Errno) -> Refusal {
    match e {
        Errno::NOENT | Errno::NOTDIR => "not found",
        // A step out of the root (EXDEV), a magic link or a symlink where none may be (ELOOP).
        Errno::XDEV | Errno::LOOP => "forbidden",
        Errno::ACCESS | Errno::PERM => "permission denied",
        _ => "cannot open", // ENAMETOOLONG, EMFILE, ...
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn beneath(dir: &OwnedFd, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    use rustix::fs::ResolveFlags;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let flags = flags | OFlags::CLOEXEC;
    // EAGAIN: a rename raced with a `..` of a symlink's target; the kernel asks us to retry.
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, rel, flags, Mode::empty(), how) {
            Err(Errno::AGAIN | Errno::INTR) if tries < 8 => tries += 1,
            r => return r,
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn beneath(_: &OwnedFd, _: &[u8], _: OFlags) -> Result<OwnedFd, Errno> {
    Err(Errno::NOSYS)
}

/// Whether openat2 with RESOLVE_BENEATH works here (not on Linux before 5.6, nor under a
/// seccomp filter that refuses it).
fn beneath_works(dir: &OwnedFd) -> bool {
    beneath(dir, b".", LOOK | OFlags::DIRECTORY).is_ok()
}

/// Resolves `rel` one component at a time, each opened `O_NOFOLLOW` relative to the one
/// before: a symlink anywhere is refused (ELOOP), `..` was refused before, so every step
/// stays beneath `dir`.
fn walk(dir: &OwnedFd, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    let step = LOOK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    let (last, dirs) = parts.split_last().expect("split yields one part at least");
    let mut at: Option<OwnedFd> = None;
    for part in dirs {
        if part.is_empty() || *part == b"." {
            continue; // `a//b`, `./a`: the same directory
        }
        let here = at.as_ref().unwrap_or(dir);
        let fd = openat(here, *part, step, Mode::empty())?;
        match FileType::from_raw_mode(fstat(&fd)?.st_mode) {
            FileType::Directory => at = Some(fd),
            FileType::Symlink => return Err(Errno::LOOP),
            _ => return Err(Errno::NOTDIR),
        }
    }
    let here = at.as_ref().unwrap_or(dir);
    // `a/` or `a/.` name the directory `a` itself.
    let last: &[u8] = if last.is_empty() { b"." } else { last };
    let fd = openat(
        here,
        last,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if FileType::from_raw_mode(fstat(&fd)?.st_mode) == FileType::Symlink {
        return Err(Errno::LOOP); // O_PATH | O_NOFOLLOW opened the link itself
    }
    Ok(fd)
}
