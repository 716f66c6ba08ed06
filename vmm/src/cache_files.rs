//! Keeping a cache directory bounded: of the files whose names match,
//! the newest (by mtime) stay. Shared by the VMM's introspection cache
//! and the CLI's initramfs and scheduler caches.

use std::path::{Path, PathBuf};

/// Removes all but the `keep` newest files in `dir` whose names satisfy
/// `matches`, calling `also` with each before it goes (to remove what
/// belongs to it, e.g. a marker beside an archive). Best effort: a cache
/// that cannot be pruned is only larger.
pub fn keep_newest(dir: &Path, keep: usize, matches: impl Fn(&str) -> bool, also: impl Fn(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| matches(&e.file_name().to_string_lossy()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, old) in files.into_iter().skip(keep) {
        also(&old);
        let _ = std::fs::remove_file(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_matching_files_stay() {
        let d = tempfile::tempdir().unwrap();
        let at = |i: u64| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(i + 1);
        for i in 0..5u64 {
            for name in [format!("a{i}.x"), format!("b{i}.x")] {
                let p = d.path().join(name);
                std::fs::write(&p, b"").unwrap();
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(at(i))
                    .unwrap();
            }
        }
        let gone = std::cell::RefCell::new(Vec::new());
        keep_newest(
            d.path(),
            2,
            |n| n.starts_with('a'),
            |p| {
                gone.borrow_mut()
                    .push(p.file_name().unwrap().to_string_lossy().into_owned())
            },
        );
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["a3.x", "a4.x", "b0.x", "b1.x", "b2.x", "b3.x", "b4.x"]
        );
        let mut gone = gone.into_inner();
        gone.sort();
        assert_eq!(gone, ["a0.x", "a1.x", "a2.x"]);
        // A missing directory is no error.
        keep_newest(&d.path().join("none"), 0, |_| true, |_| {});
    }
}
