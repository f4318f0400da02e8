//! Clustering under faults: three warren nodes, each with its etcd member, in network
//! namespaces of their own (`harness`), clients that publish with confirms and consume
//! with acks while faults are injected, and a checker of what was confirmed against what
//! was delivered (`checker`, Jepsen's total-queue model). `scenarios` holds the tests.
//! Linux and root only (namespaces, veths, iptables); tests/cluster/install.sh installs
//! etcd and iptables.

mod any_node;
pub mod checker;
mod haproxy;
pub mod harness;
mod operations;
mod scenarios;
mod scenarios2;
