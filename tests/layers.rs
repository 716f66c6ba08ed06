//! No import circle in any crate of the workspace.
//!
//! Each source file is a module; a `use` or a path naming another module
//! of the same crate (through `crate::`, `super::`, `self::` or a child's
//! name) is an edge. Paths through a `pub use` re-export are followed to
//! where the item lives, so a crate root that re-exports for its users
//! is no hub. A circle means neither module can be read or changed
//! without the other: put what both need into a leaf (a config or error
//! module) instead. The test prints every circle it finds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The crates checked, by source root (their lib.rs).
const CRATES: &[&str] = &[
    "wire/src",
    "scenarios/src",
    "vmm/src",
    "guest-init/src",
    "src",
];

type ModPath = Vec<String>;

/// One crate's modules: file module -> its file, and its re-exports.
struct Crate {
    files: BTreeMap<ModPath, PathBuf>,
    /// Modules declared inline (`mod x { .. }`), mapped to their file's module.
    inline: BTreeMap<ModPath, ModPath>,
    /// Per module: re-exported name -> absolute path of the item.
    reexports: BTreeMap<ModPath, BTreeMap<String, ModPath>>,
    /// Per module: the modules it re-exports whole (`pub use x::*`).
    globs: BTreeMap<ModPath, Vec<ModPath>>,
    /// Per module: the names of the items it defines.
    defined: BTreeMap<ModPath, BTreeSet<String>>,
}

fn module_of(root: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(root).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().map(String::as_str) == Some("bin") {
        return None; // binaries are crates of their own that use the library
    }
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    match stem {
        "lib" if parts.is_empty() => {}
        "main" if parts.is_empty() => return None,
        "mod" => {}
        _ => parts.push(stem.to_string()),
    }
    Some(parts)
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every `use` tree flattened into paths (globs keep their prefix).
fn flatten_use(
    prefix: &mut ModPath,
    tree: &syn::UseTree,
    out: &mut Vec<(ModPath, Option<String>)>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(prefix, &p.tree, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut full = prefix.clone();
            let name = n.ident.to_string();
            if name != "self" {
                full.push(name.clone());
            }
            out.push((full, Some(name)));
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.clone();
            full.push(r.ident.to_string());
            out.push((full, Some(r.rename.to_string())));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), None)),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(prefix, t, out);
            }
        }
    }
}

/// Collects the paths one file names, with the module each is named in.
struct Paths<'c> {
    krate: &'c Crate,
    /// The module being visited (file module plus inline modules).
    here: ModPath,
    found: Vec<(ModPath, ModPath)>,
    reexports: Vec<(ModPath, String, ModPath)>,
    globs: Vec<(ModPath, ModPath)>,
}

impl Paths<'_> {
    /// Makes a path absolute, or None when it leaves the crate.
    fn absolute(&self, segs: &[String]) -> Option<ModPath> {
        let first = segs.first()?;
        let mut base = match first.as_str() {
            "crate" => return Some(segs[1..].to_vec()),
            "self" => self.here.clone(),
            "super" => {
                let mut b = self.here.clone();
                let mut rest = segs;
                while rest.first().map(String::as_str) == Some("super") {
                    b.pop();
                    rest = &rest[1..];
                }
                b.extend(rest.iter().cloned());
                return Some(b);
            }
            _ => {
                let mut child = self.here.clone();
                child.push(first.clone());
                if self.krate.files.contains_key(&child) || self.krate.inline.contains_key(&child) {
                    return Some([self.here.clone(), segs.to_vec()].concat());
                }
                return None;
            }
        };
        base.extend(segs[1..].iter().cloned());
        Some(base)
    }

    fn note(&mut self, segs: &[String]) {
        if let Some(abs) = self.absolute(segs) {
            self.found.push((self.here.clone(), abs));
        }
    }
}

impl<'ast> Visit<'ast> for Paths<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.here.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.here.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut flat = Vec::new();
        flatten_use(&mut Vec::new(), &u.tree, &mut flat);
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        for (path, name) in flat {
            match (public, name.as_ref(), self.absolute(&path)) {
                (true, Some(name), Some(abs)) => {
                    self.reexports.push((self.here.clone(), name.clone(), abs))
                }
                (true, None, Some(abs)) => self.globs.push((self.here.clone(), abs)),
                _ => {}
            }
            self.note(&path);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() && p.segments.len() > 1 {
            let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.note(&segs);
        }
        syn::visit::visit_path(self, p);
    }
}

impl Crate {
    fn load(root: &Path) -> (Crate, Vec<(PathBuf, syn::File)>) {
        let mut files = Vec::new();
        rs_files(root, &mut files);
        let mut krate = Crate {
            files: BTreeMap::new(),
            inline: BTreeMap::new(),
            reexports: BTreeMap::new(),
            globs: BTreeMap::new(),
            defined: BTreeMap::new(),
        };
        let mut parsed = Vec::new();
        for f in files {
            let Some(m) = module_of(root, &f) else {
                continue;
            };
            let text = std::fs::read_to_string(&f).unwrap();
            let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            collect_inline(&m, &m, &ast.items, &mut krate.inline);
            collect_defined(&m, &ast.items, &mut krate.defined);
            // `#[macro_export]` puts a macro at the crate root.
            for item in &ast.items {
                if let syn::Item::Macro(mac) = item {
                    let exported = mac.attrs.iter().any(|a| a.path().is_ident("macro_export"));
                    if let (true, Some(name)) = (exported, &mac.ident) {
                        let mut at = m.clone();
                        at.push(name.to_string());
                        krate
                            .reexports
                            .entry(Vec::new())
                            .or_default()
                            .insert(name.to_string(), at);
                    }
                }
            }
            krate.files.insert(m, f.clone());
            parsed.push((f, ast));
        }
        (krate, parsed)
    }

    /// The file module that holds an absolute path, following re-exports.
    fn resolve(&self, path: &ModPath, depth: usize) -> Option<ModPath> {
        for len in (0..=path.len()).rev() {
            let prefix = path[..len].to_vec();
            let owner = if self.files.contains_key(&prefix) {
                prefix.clone()
            } else if let Some(file) = self.inline.get(&prefix) {
                file.clone()
            } else {
                continue;
            };
            if let (Some(name), true) = (path.get(len), depth < 8) {
                if let Some(target) = self.reexports.get(&prefix).and_then(|r| r.get(name)) {
                    let mut next = target.clone();
                    next.extend(path[len + 1..].iter().cloned());
                    return self.resolve(&next, depth + 1);
                }
                // Not defined here: through a glob re-export that has it.
                let here = self.defined.get(&prefix).is_some_and(|d| d.contains(name));
                for g in self
                    .globs
                    .get(&prefix)
                    .into_iter()
                    .flatten()
                    .filter(|_| !here)
                {
                    let has = self.defined.get(g).is_some_and(|d| d.contains(name))
                        || self.reexports.get(g).is_some_and(|r| r.contains_key(name));
                    if has {
                        let mut next = g.clone();
                        next.extend(path[len..].iter().cloned());
                        return self.resolve(&next, depth + 1);
                    }
                }
            }
            return Some(owner);
        }
        None
    }
}

fn collect_inline(
    file: &ModPath,
    here: &ModPath,
    items: &[syn::Item],
    out: &mut BTreeMap<ModPath, ModPath>,
) {
    for item in items {
        if let syn::Item::Mod(m) = item {
            if let Some((_, inner)) = &m.content {
                let mut p = here.clone();
                p.push(m.ident.to_string());
                out.insert(p.clone(), file.clone());
                collect_inline(file, &p, inner, out);
            }
        }
    }
}

/// The names of the items each module (file or inline) defines.
fn collect_defined(
    here: &ModPath,
    items: &[syn::Item],
    out: &mut BTreeMap<ModPath, BTreeSet<String>>,
) {
    for item in items {
        let name = match item {
            syn::Item::Struct(i) => Some(&i.ident),
            syn::Item::Enum(i) => Some(&i.ident),
            syn::Item::Union(i) => Some(&i.ident),
            syn::Item::Fn(i) => Some(&i.sig.ident),
            syn::Item::Const(i) => Some(&i.ident),
            syn::Item::Static(i) => Some(&i.ident),
            syn::Item::Type(i) => Some(&i.ident),
            syn::Item::Trait(i) => Some(&i.ident),
            syn::Item::Mod(i) => Some(&i.ident),
            syn::Item::Macro(i) => i.ident.as_ref(),
            _ => None,
        };
        if let Some(n) = name {
            out.entry(here.clone()).or_default().insert(n.to_string());
        }
        if let syn::Item::Mod(m) = item {
            if let Some((_, inner)) = &m.content {
                let mut p = here.clone();
                p.push(m.ident.to_string());
                collect_defined(&p, inner, out);
            }
        }
    }
}

/// Tarjan's strongly connected components of more than one module.
fn circles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'e> {
        edges: &'e BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<ModPath, usize>,
        low: BTreeMap<ModPath, usize>,
        stack: Vec<ModPath>,
        on: BTreeSet<ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    fn visit(s: &mut State, v: &ModPath) {
        let i = s.index.len();
        s.index.insert(v.clone(), i);
        s.low.insert(v.clone(), i);
        s.stack.push(v.clone());
        s.on.insert(v.clone());
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(&w);
                let done = &w == v;
                scc.push(w);
                if done {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The module edges of one crate, source root relative to the workspace.
fn crate_edges(
    root: &Path,
) -> (
    BTreeMap<ModPath, BTreeSet<ModPath>>,
    BTreeMap<ModPath, PathBuf>,
) {
    let (mut krate, parsed) = Crate::load(root);
    let mut found = Vec::new();
    for (f, ast) in &parsed {
        let here = module_of(root, f).unwrap();
        let mut v = Paths {
            krate: &krate,
            here,
            found: Vec::new(),
            reexports: Vec::new(),
            globs: Vec::new(),
        };
        v.visit_file(ast);
        let Paths {
            found: seen,
            reexports,
            globs,
            ..
        } = v;
        found.extend(seen);
        for (m, name, abs) in reexports {
            krate.reexports.entry(m).or_default().insert(name, abs);
        }
        for (m, abs) in globs {
            krate.globs.entry(m).or_default().push(abs);
        }
    }
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, path) in found {
        let from = krate.resolve(&from, 0).unwrap_or(from);
        if let Some(to) = krate.resolve(&path, 0) {
            if to != from {
                edges.entry(from).or_default().insert(to);
            }
        }
    }
    (edges, krate.files)
}

fn show(files: &BTreeMap<ModPath, PathBuf>, m: &ModPath) -> String {
    files
        .get(m)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("{m:?}"))
}

#[test]
fn no_crate_has_an_import_circle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut report = String::new();
    for c in CRATES {
        let root = workspace.join(c);
        let (edges, files) = crate_edges(&root);
        assert!(files.len() > 1, "{c}: no modules found");
        for scc in circles(&edges) {
            let members: BTreeSet<_> = scc.iter().cloned().collect();
            report.push_str(&format!("\n{c}: a circle of {} modules:\n", scc.len()));
            for m in &scc {
                let inside: Vec<String> = edges[m]
                    .iter()
                    .filter(|t| members.contains(*t))
                    .map(|t| {
                        show(&files, t)
                            .trim_start_matches(&format!("{}/", root.display()))
                            .to_string()
                    })
                    .collect();
                let name = show(&files, m);
                let name = name.trim_start_matches(&format!("{}/", root.display()));
                report.push_str(&format!("  {name} -> {}\n", inside.join(", ")));
            }
        }
    }
    assert!(report.is_empty(), "import circles:{report}");
}

#[test]
fn the_check_sees_a_circle() {
    let a = vec!["a".to_string()];
    let b = vec!["b".to_string()];
    let c = vec!["c".to_string()];
    let mut edges = BTreeMap::new();
    edges.insert(a.clone(), BTreeSet::from([b.clone()]));
    edges.insert(b.clone(), BTreeSet::from([a.clone(), c.clone()]));
    edges.insert(c.clone(), BTreeSet::new());
    assert_eq!(circles(&edges), vec![vec![a, b]]);
}
