//! Topic exchange: binding keys are dot-separated words where `*` matches exactly one
//! word and `#` zero or more. Bindings live in a trie of words (as RabbitMQ's
//! rabbit_exchange_type_topic), so matching walks the key's words, not the bindings:
//! routing cost does not grow with the number of bindings.

use std::collections::{HashMap, HashSet};

use super::{Destination, Dests};

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Bindings whose key ends at this node, once per binding.
    dests: Dests,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.dests.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct TopicRouter {
    root: Node,
}

/// RabbitMQ splits "" into zero words, and "a..b" into ["a", "", "b"].
fn words(key: &str) -> impl Iterator<Item = &str> {
    let empty = key.is_empty();
    key.split('.').filter(move |_| !empty)
}

impl TopicRouter {
    pub fn bind(&mut self, key: &str, dest: Destination) {
        let mut node = &mut self.root;
        for w in words(key) {
            node = node.children.entry(Box::from(w)).or_default();
        }
        node.dests.push(dest);
    }

    pub fn unbind(&mut self, key: &str, dest: &Destination) {
        fn remove(node: &mut Node, words: &[&str], dest: &Destination) {
            match words.split_first() {
                None => {
                    node.dests.remove(dest);
                }
                Some((w, rest)) => {
                    if let Some(child) = node.children.get_mut(*w) {
                        remove(child, rest, dest);
                        if child.is_empty() {
                            node.children.remove(*w);
                        }
                    }
                }
            }
        }
        let ws: Vec<&str> = words(key).collect();
        remove(&mut self.root, &ws, dest);
    }

    pub fn route(&self, key: &str, out: &mut Vec<Destination>) {
        let ws: Vec<&str> = words(key).collect();
        walk(&self.root, &ws, out, &mut None);
    }
}

/// `seen` holds the (`#` node, words left) pairs already walked: a binding such as
/// `#.#.#...` (or `#.*.#.*...`) would otherwise be walked once per way of splitting the
/// key among its `#`s, exponentially many for a long key, and one publish would hold
/// a worker for ever. Each pair gives the same destinations however it is reached.
fn walk(
    node: &Node,
    words: &[&str],
    out: &mut Vec<Destination>,
    seen: &mut Option<HashSet<(*const Node, usize)>>,
) {
    if let Some(hash) = node.children.get("#") {
        // `#` may swallow any number of the remaining words, including none.
        for skip in 0..=words.len() {
            let rest = &words[skip..];
            if seen
                .get_or_insert_with(HashSet::new)
                .insert((hash as *const Node, rest.len()))
            {
                walk(hash, rest, out, seen);
            }
        }
    }
    let Some((w, rest)) = words.split_first() else {
        out.extend(node.dests.as_slice().iter().cloned());
        return;
    };
    // "*" and "#" in a routing key are plain words; the branches above and below
    // already cover binding words equal to them.
    if *w != "#" && *w != "*" {
        if let Some(child) = node.children.get(*w) {
            walk(child, rest, out, seen);
        }
    }
    if let Some(star) = node.children.get("*") {
        walk(star, rest, out, seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    fn q(n: &str) -> Destination {
        Destination::Queue(Arc::from(n))
    }

    fn matched(r: &TopicRouter, key: &str) -> BTreeSet<String> {
        let mut out = Vec::new();
        r.route(key, &mut out);
        out.iter().map(|d| d.name().to_owned()).collect()
    }

    fn router(keys: &[&str]) -> TopicRouter {
        let mut r = TopicRouter::default();
        for k in keys {
            r.bind(k, q(k));
        }
        r
    }

    #[test]
    fn star_matches_exactly_one_word() {
        let r = router(&["a.*.c", "*", "*.*"]);
        assert_eq!(matched(&r, "a.b.c"), ["a.*.c"].map(String::from).into());
        assert_eq!(matched(&r, "a.c"), ["*.*"].map(String::from).into());
        assert_eq!(matched(&r, "a"), ["*"].map(String::from).into());
        assert!(matched(&r, "").is_empty());
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        let r = router(&["#", "a.#", "a.#.b", "#.b", "a.#.#.c"]);
        assert_eq!(matched(&r, ""), ["#"].map(String::from).into());
        assert_eq!(matched(&r, "a"), ["#", "a.#"].map(String::from).into());
        assert_eq!(
            matched(&r, "a.b"),
            ["#", "a.#", "a.#.b", "#.b"].map(String::from).into()
        );
        assert_eq!(
            matched(&r, "a.x.y.b"),
            ["#", "a.#", "a.#.b", "#.b"].map(String::from).into()
        );
        assert_eq!(
            matched(&r, "a.c"),
            ["#", "a.#", "a.#.#.c"].map(String::from).into()
        );
    }

    #[test]
    fn empty_words_are_words() {
        let r = router(&["a..b", "a.*.b", ""]);
        assert_eq!(
            matched(&r, "a..b"),
            ["a..b", "a.*.b"].map(String::from).into()
        );
        assert_eq!(matched(&r, ""), [""].map(String::from).into());
    }

    #[test]
    fn unbind_prunes_and_keeps_other_bindings() {
        let mut r = router(&["a.b", "a.*"]);
        r.unbind("a.b", &q("a.b"));
        assert_eq!(matched(&r, "a.b"), ["a.*"].map(String::from).into());
        r.unbind("a.*", &q("a.*"));
        assert!(r.root.is_empty());
    }

    #[test]
    fn many_bindings_route_by_words() {
        let mut r = TopicRouter::default();
        for i in 0..10_000 {
            r.bind(&format!("stock.{i}.*"), q(&i.to_string()));
        }
        assert_eq!(
            matched(&r, "stock.42.nyse"),
            ["42"].map(String::from).into()
        );
    }

    #[test]
    fn many_hashes_against_a_long_key_route_at_once() {
        // 127 `#`s and a 128-word key: without the walk's memory, C(255, 127) paths.
        let key = vec!["#"; 127].join(".");
        let r = router(&[key.as_str(), "#.*.#.*.#.*.#.*.#.*.#.*.#.*.#.*.#.*.#"]);
        let long = vec!["w"; 128].join(".");
        assert_eq!(matched(&r, &long).len(), 2);
    }
}
