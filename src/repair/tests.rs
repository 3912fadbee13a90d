//! Unit tests of the repairer's bookkeeping and copy commands.

use super::*;

#[test]
fn a_key_in_its_last_millisecond_is_not_restored_persistent() {
    let ttl = |pttl| {
        restore(b"k", b"payload", pttl, true)
            .arg(2)
            .map(<[u8]>::to_vec)
    };
    assert_eq!(ttl(0), Some(b"1".to_vec()));
    assert_eq!(ttl(-1), Some(b"0".to_vec()));
    assert_eq!(ttl(1500), Some(b"1500".to_vec()));
}

#[test]
fn writes_to_pending_keys_are_noted_and_finished_jobs_forgotten() {
    let (r, _rx) = Repairer::new(Journal::new(None, 10));
    r.note_write(None, b"k"); // nothing pending: no bookkeeping
    assert_eq!(r.pending(), 0);
    let job = |k: &'static [u8]| RepairJob {
        from: Side::Old,
        db: None,
        key: Bytes::from_static(k),
        stats: Arc::default(),
        follows: true,
    };
    assert!(r.submit(job(b"k")));
    assert!(r.submit(job(b"k")), "queued once, answered true");
    assert_eq!(r.pending(), 1);
    let seq = r.seq.load(Ordering::Relaxed);
    assert!(!r.written_since(&job(b"k"), seq));
    r.note_write(None, b"k");
    r.note_write(Some(1), b"k"); // another database
    assert!(r.written_since(&job(b"k"), seq));
    r.finish(&job(b"k"));
    assert_eq!(r.pending(), 0);
}

#[test]
fn a_key_waiting_for_a_copy_is_pending_until_it_lands() {
    let (r, _rx) = Repairer::new(Journal::new(None, 10));
    let k = Bytes::from_static(b"k");
    assert!(!r.pending_for(None, &k));
    let job = || RepairJob {
        from: Side::New,
        db: None,
        key: k.clone(),
        stats: Arc::default(),
        follows: true,
    };
    assert!(r.submit(job()));
    assert!(r.pending_for(None, &k));
    assert!(!r.pending_for(Some(1), &k), "another database");
    r.finish(&job());
    assert!(!r.pending_for(None, &k));
    // A lost mirrored DEL, journalled: pending until copied.
    r.lost(&Arc::default(), Side::New, None, std::slice::from_ref(&k));
    assert!(r.pending_for(None, &k));
    r.journal.copied(None, &k, r.start());
    assert!(!r.pending_for(None, &k));
}
