//! The Rust API (`interpool::Pool`) on `forkserver` process workers: the cases of
//! `tests/support/mod.rs`, with the fixtures of `tests/python/` and the example plugins.

mod support;

use interpool::WorkerKind;

const KIND: WorkerKind = WorkerKind::Forkserver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    support::smoke(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_cross_both_ways() {
    support::values_cross_both_ways(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_cross_both_ways_into_a_private_mapping_of_the_worker() {
    let pool = support::pool(KIND, 1);
    support::buffers_cross_both_ways(&pool, "mmap").await;
    pool.shutdown(support::GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arguments_arrive_as_bytes() {
    let pool = support::pool(KIND, 1);
    support::bytes_arguments_arrive_as_bytes(&pool).await;
    pool.shutdown(support::GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_back_with_their_traceback() {
    support::errors_come_back_with_their_traceback(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_runs_in_every_worker_and_its_failure_breaks_the_call() {
    support::init_runs_in_every_worker_and_its_failure_breaks_the_call(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_kills_its_process() {
    support::dropping_a_call_kills_its_process(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_plugin_breaks_only_its_call() {
    support::a_crashing_plugin_breaks_only_its_call(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_call_at_once_within_max_workers() {
    support::many_tasks_call_at_once_within_max_workers(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_pool_refuses_calls() {
    support::a_shut_down_pool_refuses_calls(KIND).await;
}

#[test]
fn a_missing_executable_makes_the_kind_unavailable() {
    support::a_missing_executable_makes_the_kind_unavailable(KIND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_discovered_executable_is_the_embedded_pythons() {
    support::the_discovered_executable_is_the_embedded_pythons(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tasks_per_worker_replaces_a_worker_after_that_many_calls() {
    support::max_tasks_per_worker_replaces_a_worker_after_that_many_calls(KIND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_callable_woken_early_still_gets_each_value() {
    support::a_learned_callable_woken_early_still_gets_each_value(KIND).await;
}
