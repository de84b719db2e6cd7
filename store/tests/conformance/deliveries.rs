//! Delivery markers, per sink.

use super::*;

// Deliveries and catalogue

/// A delivery marker belongs to one sink.
pub(crate) async fn check_delivery_markers_are_per_sink(store: Arc<dyn Store>) {
    let (a, b) = (unique("sink-a"), unique("sink-b"));
    let ids: Vec<String> = (0..3).map(|_| new_id()).collect();

    assert_eq!(store.delivered(&a, &ids).await.unwrap(), vec![false; 3]);
    store
        .mark_delivered(&a, &[ids[0].clone(), ids[2].clone()])
        .await
        .unwrap();
    assert_eq!(
        store.delivered(&a, &ids).await.unwrap(),
        vec![true, false, true]
    );
    assert_eq!(store.delivered(&b, &ids).await.unwrap(), vec![false; 3]);

    // Marking again is harmless; the answer follows the order of the ids asked for.
    store.mark_delivered(&a, &ids[..1]).await.unwrap();
    store.mark_delivered(&b, &ids[1..2]).await.unwrap();
    let reversed: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(
        store.delivered(&a, &reversed).await.unwrap(),
        vec![true, false, true]
    );
    assert_eq!(
        store.delivered(&b, &reversed).await.unwrap(),
        vec![false, true, false]
    );
    assert!(store.delivered(&a, &[]).await.unwrap().is_empty());
}
