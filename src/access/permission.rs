//! Permissions: the configure/write/read patterns a user has in a vhost, topic
//! permissions on routing keys, and the per-channel publish grant cache.

use std::collections::HashMap;

use bytes::Bytes;
use regex::Regex;

use crate::util::KeyHash;

/// The three kinds of access RabbitMQ checks (its access-control table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Configure,
    Write,
    Read,
}

impl Perm {
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Configure => "configure",
            Perm::Write => "write",
            Perm::Read => "read",
        }
    }
}

/// A permission regex as the operator wrote it, and compiled.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    re: Regex,
}

impl Pattern {
    /// RabbitMQ treats the empty pattern as `^$` (it grants nothing a client can name).
    pub fn new(source: &str) -> Result<Pattern, String> {
        Self::expanded(source, source)
    }

    /// A topic pattern with `{username}` and `{vhost}` expanded (RabbitMQ's variable
    /// expansion); `source` is kept unexpanded for listing and export.
    pub fn with_vars(source: &str, user: &str, vhost: &str) -> Result<Pattern, String> {
        let expanded = source
            .replace("{username}", &regex::escape(user))
            .replace("{vhost}", &regex::escape(vhost));
        Self::expanded(source, &expanded)
    }

    fn expanded(source: &str, re: &str) -> Result<Pattern, String> {
        let re = if re.is_empty() { "^$" } else { re };
        let re =
            Regex::new(re).map_err(|e| format!("invalid regular expression '{source}': {e}"))?;
        Ok(Pattern {
            source: source.to_owned(),
            re,
        })
    }

    /// Unanchored, like Erlang's re:run: `foo` matches `a-foo-b`; anchor with `^...$`.
    pub fn matches(&self, name: &str) -> bool {
        self.re.is_match(name)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// A user's permissions in one vhost.
#[derive(Debug, Clone)]
pub struct Permission {
    pub configure: Pattern,
    pub write: Pattern,
    pub read: Pattern,
}

impl Permission {
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Permission, String> {
        Ok(Permission {
            configure: Pattern::new(configure)?,
            write: Pattern::new(write)?,
            read: Pattern::new(read)?,
        })
    }

    pub fn allows(&self, perm: Perm, name: &str) -> bool {
        match perm {
            Perm::Configure => self.configure.matches(name),
            Perm::Write => self.write.matches(name),
            Perm::Read => self.read.matches(name),
        }
    }
}

/// Topic permissions for one exchange: patterns on routing keys (write is checked on
/// publish, read on bind), for topic exchanges only.
#[derive(Debug, Clone)]
pub struct TopicPermission {
    pub exchange: String,
    pub write: Pattern,
    pub read: Pattern,
}

/// What a channel learnt about publishing to one exchange: write access is granted, and
/// whether routing keys still need a topic check. Valid for one (access generation,
/// topology version) pair, so a permission change or exchange re-declaration is seen by
/// the next publish, and publishing pays no regex per message otherwise.
#[derive(Debug, Default)]
pub struct PublishGrants {
    generation: (u64, u64),
    by_exchange: HashMap<Bytes, Grant, KeyHash>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Allowed,
    /// Allowed, but topic permissions exist: check each routing key.
    TopicCheck,
}

impl PublishGrants {
    pub fn get(&mut self, generation: (u64, u64), exchange: &[u8]) -> Option<Grant> {
        if self.generation != generation {
            self.by_exchange.clear();
            self.generation = generation;
            return None;
        }
        self.by_exchange.get(exchange).copied()
    }

    pub fn put(&mut self, exchange: &Bytes, grant: Grant) {
        // Exchanges are few; a client cycling through many names just starts over.
        if self.by_exchange.len() >= 1024 {
            self.by_exchange.clear();
        }
        self.by_exchange.insert(exchange.clone(), grant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_behave_like_erlang_re() {
        let p = Permission::new("", "^amq\\.gen", "q").unwrap();
        assert!(!p.allows(Perm::Configure, "anything"));
        assert!(p.allows(Perm::Configure, ""));
        assert!(p.allows(Perm::Write, "amq.gen-abc") && !p.allows(Perm::Write, "x-amq.gen"));
        assert!(p.allows(Perm::Read, "my-q-1"), "unanchored");
        assert!(Permission::new("(", "", "").is_err());
    }

    #[test]
    fn topic_variables_expand() {
        let p = Pattern::with_vars("^{username}\\.", "a.b", "/").unwrap();
        assert!(p.matches("a.b.x") && !p.matches("axb.x"));
        assert_eq!(p.as_str(), "^{username}\\.");
    }
}
