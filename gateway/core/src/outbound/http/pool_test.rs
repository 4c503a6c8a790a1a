use super::*;

#[tokio::test]
async fn counts_follow_the_guards_and_wake_a_waiter() {
    let pool = Arc::new(Pool::default());
    let d = pool.begin_dial();
    assert_eq!(pool.counts(), (0, 1));
    let o = pool.opened();
    drop(d);
    assert_eq!(pool.counts(), (1, 0));
    // A request queued at max_connections is woken when a connection goes away.
    let p2 = pool.clone();
    let waiter = tokio::spawn(async move { p2.freed.notified().await });
    tokio::task::yield_now().await;
    drop(o);
    tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pool.counts(), (0, 0));
    assert!(pool.take(&("x".into(), 1)).is_none() && pool.take_any().is_none());
}
