//! The model calls of an evaluation: every task's requests pooled in one list, the cached
//! answers taken first, then one call per request kind (log-likelihoods, text generations,
//! image generations), each answer written to the cache as it arrives.

use crate::cache::{self, RequestCache};
use crate::error::Result;
use crate::lm::{ImageGen, LanguageModel};
use crate::task::{Request, Response};

/// Which phase a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Loglikelihood,
    Generate,
}

/// Every request of every task in (task, document, request) order, with its cache key and,
/// once known, its response.
pub(super) struct Pool<'a> {
    requests: Vec<&'a Request>,
    keys: Vec<String>,
    pub(super) responses: Vec<Option<Response>>,
    /// A shard's requests (`None`: all of them); the others are neither computed nor taken
    /// from the cache.
    mine: Option<Vec<bool>>,
}

impl<'a> Pool<'a> {
    /// Pools the requests (every task's, in task, document, request order) and takes the
    /// responses the cache already holds for the requests this run answers (`mine`, or all).
    pub(super) fn new(
        requests: Vec<&'a Request>,
        identity: &str,
        cache: Option<&mut RequestCache>,
        mine: Option<Vec<bool>>,
    ) -> Self {
        let keys: Vec<String> = requests.iter().map(|r| cache::key(identity, r)).collect();
        let wanted = |i: usize| mine.as_ref().is_none_or(|m| m[i]);
        let responses: Vec<Option<Response>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                cache
                    .as_ref()
                    .filter(|_| wanted(i))
                    .and_then(|c| c.get(k).cloned())
            })
            .collect();
        if let Some(c) = cache {
            c.hits = responses.iter().filter(|r| r.is_some()).count();
        }
        Self {
            requests,
            keys,
            responses,
            mine,
        }
    }

    /// Whether this run answers pool slot `i`.
    fn is_mine(&self, i: usize) -> bool {
        self.mine.as_ref().is_none_or(|m| m[i])
    }

    /// Log-likelihoods: one call for all tasks.
    pub(super) fn run_loglikelihood(
        &mut self,
        lm: &dyn LanguageModel,
        mut cache: Option<&mut RequestCache>,
        progress: &mut dyn FnMut(Phase, usize, usize),
    ) -> Result<()> {
        let ll_slots: Vec<usize> = (0..self.requests.len())
            .filter(|&i| matches!(self.requests[i], Request::Loglikelihood { .. }))
            .collect();
        // The model forms its units from every request (a shard's units are the unsharded
        // run's); what is cached or another shard's is skipped.
        let skipped: Vec<bool> = ll_slots
            .iter()
            .map(|&i| self.responses[i].is_some() || !self.is_mine(i))
            .collect();
        let pairs: Vec<(String, String)> = ll_slots
            .iter()
            .map(|&i| match self.requests[i] {
                Request::Loglikelihood {
                    context,
                    continuation,
                } => (context.clone(), continuation.clone()),
                _ => (String::new(), String::new()),
            })
            .collect();
        let total_ll = ll_slots.iter().filter(|&&i| self.is_mine(i)).count();
        let responses = &mut self.responses;
        let keys = &self.keys;
        let mut done = ll_slots.iter().filter(|&&i| responses[i].is_some()).count();
        progress(Phase::Loglikelihood, done, total_ll);
        lm.loglikelihood(&pairs, &|j| skipped[j], &mut |unit| {
            let mut fresh = Vec::new();
            for &(j, scored) in unit {
                let slot = ll_slots[j];
                if responses[slot].is_none() {
                    done += 1;
                    fresh.push((keys[slot].clone(), Response::Loglikelihood(scored)));
                }
                responses[slot] = Some(Response::Loglikelihood(scored));
            }
            if let Some(c) = cache.as_mut() {
                c.put_all(fresh)?;
            }
            progress(Phase::Loglikelihood, done, total_ll);
            Ok(())
        })
    }

    /// Text generations: the `generate_until` requests in one call (an API model keeps
    /// several in flight; an in-process one answers them in order), then the MMLU script's
    /// prompts one at a time, grouped by subject.
    pub(super) fn run_generations(
        &mut self,
        lm: &dyn LanguageModel,
        mut cache: Option<&mut RequestCache>,
        progress: &mut dyn FnMut(Phase, usize, usize),
    ) -> Result<()> {
        let is_gen = |r: &Request| {
            matches!(
                r,
                Request::GenerateUntil { .. } | Request::GenerateFit { .. }
            )
        };
        let total = (0..self.requests.len())
            .filter(|&i| self.is_mine(i) && is_gen(self.requests[i]))
            .count();
        let open = |pool: &Self, i: usize| pool.is_mine(i) && pool.responses[i].is_none();
        let until_slots: Vec<usize> = (0..self.requests.len())
            .filter(|&i| open(self, i) && matches!(self.requests[i], Request::GenerateUntil { .. }))
            .collect();
        // MMLU prompts grouped by subject (a stable sort; responses do not depend on the order),
        // so that the model's prefix cache holds each subject's 5-shot block while it is used.
        let mut fit_slots: Vec<usize> = (0..self.requests.len())
            .filter(|&i| open(self, i) && matches!(self.requests[i], Request::GenerateFit { .. }))
            .collect();
        fit_slots.sort_by_key(|&i| match self.requests[i] {
            Request::GenerateFit { header, .. } => Some(header.as_str()),
            _ => None,
        });
        let mut done = total - until_slots.len() - fit_slots.len();
        progress(Phase::Generate, done, total);
        let untils: Vec<(String, Vec<String>)> = until_slots
            .iter()
            .filter_map(|&i| match self.requests[i] {
                Request::GenerateUntil { context, until } => Some((context.clone(), until.clone())),
                _ => None,
            })
            .collect();
        {
            let (responses, keys) = (&mut self.responses, &self.keys);
            let cache = &mut cache;
            lm.generate_untils(&untils, &mut |finished| {
                let mut fresh = Vec::with_capacity(finished.len());
                for (j, text) in finished {
                    let slot = until_slots[*j];
                    let r = Response::Generated(text.clone());
                    fresh.push((keys[slot].clone(), r.clone()));
                    responses[slot] = Some(r);
                    done += 1;
                }
                if let Some(c) = cache.as_mut() {
                    c.put_all(fresh)?;
                }
                progress(Phase::Generate, done, total);
                Ok(())
            })?;
        }
        for &slot in &fit_slots {
            let Request::GenerateFit {
                header,
                shots,
                question,
                fit_tokens,
                max_new_tokens,
            } = self.requests[slot]
            else {
                continue;
            };
            let text = lm.generate_fit(header, shots, question, *fit_tokens, *max_new_tokens)?;
            let r = Response::Generated(text);
            if let Some(c) = cache.as_mut() {
                c.put_all(vec![(self.keys[slot].clone(), r.clone())])?;
            }
            self.responses[slot] = Some(r);
            done += 1;
            progress(Phase::Generate, done, total);
        }
        Ok(())
    }

    /// Image generations: one call, batched by the model. A shard passes the requests of its
    /// whole windows, which the model cuts into the same windows again.
    pub(super) fn run_image_generations(
        &mut self,
        lm: &dyn LanguageModel,
        mut cache: Option<&mut RequestCache>,
        progress: &mut dyn FnMut(Phase, usize, usize),
    ) -> Result<()> {
        let img_slots: Vec<usize> = (0..self.requests.len())
            .filter(|&i| {
                self.responses[i].is_none()
                    && self.is_mine(i)
                    && matches!(self.requests[i], Request::GenerateImage { .. })
            })
            .collect();
        if img_slots.is_empty() {
            return Ok(());
        }
        let reqs: Vec<ImageGen> = img_slots
            .iter()
            .filter_map(|&i| match self.requests[i] {
                Request::GenerateImage {
                    context,
                    image_ref,
                    decoding,
                    ..
                } => Some(ImageGen {
                    context: context.clone(),
                    image: image_ref.clone(),
                    decoding: decoding.clone(),
                }),
                _ => None,
            })
            .collect();
        let total = img_slots.len();
        let mut done = 0;
        progress(Phase::Generate, done, total);
        let responses = &mut self.responses;
        let keys = &self.keys;
        lm.generate_images(&reqs, &mut |unit| {
            let mut fresh = Vec::new();
            for (j, text) in unit {
                let slot = img_slots[*j];
                let r = Response::Generated(text.clone());
                fresh.push((keys[slot].clone(), r.clone()));
                responses[slot] = Some(r);
                done += 1;
            }
            if let Some(c) = cache.as_mut() {
                c.put_all(fresh)?;
            }
            progress(Phase::Generate, done, total);
            Ok(())
        })
    }
}
