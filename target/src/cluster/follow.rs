//! Following one coordinator key for one device: the watch loop that shared
//! reservations (`pr.rs`) and mode parameters (`mode.rs`) have in common.
//!
//! Every event from the start revision on is handed to the caller with the device;
//! a broken watch is re-established after the caller resynchronised the device
//! (what was missed cannot be told apart, so the caller installs the current state
//! quietly and says where to watch from). The loop ends once the device is gone,
//! checked on every event and at least every `idle_check`.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use mosaic_coord::{Coordinator, Event, KeyRange};
use tracing::{debug, warn};

use crate::device::Device;

/// Pause before watching again after the coordinator refused a watch.
const REWATCH_PAUSE: Duration = Duration::from_millis(100);

/// Hands every event of `key` from revision `start` on to `event`, until `device` is
/// gone. After a failed or broken watch, `resync` installs the key's current state
/// and returns the revision to watch from (`None`: the device is gone).
pub(crate) async fn follow_key<R, F, E>(
    coord: Arc<dyn Coordinator>,
    key: String,
    device: Weak<Device>,
    mut start: i64,
    idle_check: Duration,
    mut resync: R,
    mut event: E,
) where
    R: FnMut() -> F,
    F: Future<Output = Option<i64>>,
    E: FnMut(&Device, Event),
{
    loop {
        if device.strong_count() == 0 {
            return;
        }
        let mut w = match coord.watch(KeyRange::key(key.clone()), Some(start)).await {
            Ok(w) => w,
            Err(e) => {
                warn!(key = %key, "watching: {e}");
                tokio::time::sleep(REWATCH_PAUSE).await;
                match resync().await {
                    Some(next) => start = next,
                    None => return,
                }
                continue;
            }
        };
        loop {
            let resp = tokio::select! {
                r = w.recv() => r,
                // Wake up now and then to notice a dropped device.
                _ = tokio::time::sleep(idle_check) => {
                    if device.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
            };
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    debug!(key = %key, "watch ended: {e}");
                    break;
                }
            };
            let Some(d) = device.upgrade() else { return };
            for ev in resp.events {
                event(&d, ev);
            }
            start = resp.revision + 1;
        }
    }
}
