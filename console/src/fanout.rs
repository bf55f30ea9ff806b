//! One request to many instances over the one connection.

use std::time::{Duration, Instant};

use csg_protocol::methods::Method;
use csg_protocol::{InstanceId, MethodName, Reply, RequestId};
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use crate::call::{method_name, CallError, CallOptions};
use crate::client::Console;
use crate::ids::derive_instance_id;

/// How a fan-out runs.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// Calls in flight at once (default 1024). Each waits for its own reply, so this bounds
    /// how many replies can arrive at the console together; brokers limit the messages in
    /// flight to one client (Mosquitto: `max_inflight_messages`, `max_queued_messages`) and
    /// drop the excess, which the retries then recover at the cost of time.
    pub concurrency: usize,
    /// Give each instance its own id `{base}:{instance}` (default true). Off, every instance
    /// gets the base id itself: for a single instance, whose id must not depend on how the
    /// result is printed (a re-run with the same id must be recognised).
    pub derive_ids: bool,
}

impl Default for FanoutOptions {
    fn default() -> Self {
        Self {
            concurrency: 1024,
            derive_ids: true,
        }
    }
}

/// What one instance of a fan-out answered.
#[derive(Debug)]
pub struct InstanceOutcome {
    pub instance: InstanceId,
    /// The request id sent to this instance.
    pub id: RequestId,
    pub result: Result<Reply, CallError>,
    /// From the first send to the end of the call.
    pub elapsed: Duration,
}

impl Console {
    /// [`Console::call_many`] with a typed [`Method`]: its name and params as the protocol writes
    /// them.
    pub async fn call_many_method<F>(
        &self,
        instances: &[InstanceId],
        method: &Method,
        opts: &CallOptions,
        fanout: &FanoutOptions,
        progress: F,
    ) -> Vec<InstanceOutcome>
    where
        F: FnMut(&InstanceOutcome, usize, usize),
    {
        let params = method.params();
        self.call_many(
            instances,
            &method_name(method),
            &params,
            opts,
            fanout,
            progress,
        )
        .await
    }

    /// Sends the same request to every instance concurrently and returns the outcomes in the
    /// order of `instances`.
    ///
    /// Each instance gets the id `{base}:{instance}` (hashed when longer than 64 characters),
    /// where `base` is `opts.id` or one fresh id for the whole fan-out. Running the same fan-out
    /// again with `opts.id` set to that base is therefore safe: every agent recognises its id.
    /// Instances should be distinct; a repeated one fails with [`CallError::DuplicateId`].
    ///
    /// `progress(outcome, done, total)` is called as each call finishes, on the caller's task.
    pub async fn call_many<F>(
        &self,
        instances: &[InstanceId],
        method: &MethodName,
        params: &Map<String, Value>,
        opts: &CallOptions,
        fanout: &FanoutOptions,
        mut progress: F,
    ) -> Vec<InstanceOutcome>
    where
        F: FnMut(&InstanceOutcome, usize, usize),
    {
        let base = opts.id.clone().unwrap_or_else(|| self.new_request_id());
        let total = instances.len();
        let mut results: Vec<Option<InstanceOutcome>> = Vec::with_capacity(total);
        results.resize_with(total, || None);
        let mut tasks = JoinSet::new();
        let mut next = 0;
        let mut done = 0;
        let concurrency = fanout.concurrency.max(1);
        while done < total {
            while next < total && tasks.len() < concurrency {
                let console = self.clone();
                let instance = instances[next].clone();
                let method = method.clone();
                let params = params.clone();
                let mut opts = opts.clone();
                let id = if fanout.derive_ids {
                    derive_instance_id(&base, &instance)
                } else {
                    base.clone()
                };
                opts.id = Some(id.clone());
                let index = next;
                tasks.spawn(async move {
                    let start = Instant::now();
                    let result = console.call(&instance, &method, params, &opts).await;
                    let outcome = InstanceOutcome {
                        instance,
                        id,
                        result,
                        elapsed: start.elapsed(),
                    };
                    (index, outcome)
                });
                next += 1;
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match joined {
                Ok((index, outcome)) => {
                    done += 1;
                    progress(&outcome, done, total);
                    results[index] = Some(outcome);
                }
                // A call never panics on purpose; surface it as the bug it is.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("fan-out task cancelled: {e}"),
            }
        }
        results
            .into_iter()
            .map(|o| o.expect("every index is filled once"))
            .collect()
    }
}
