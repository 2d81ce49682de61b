//! The model behind the server: one worker thread owns the model and takes jobs from a bounded
//! queue. Each time it wakes it drains what is queued: every scoring job in the drain (prompts
//! from any number of clients) runs as length-sorted, right-padded batches of `batch_size`;
//! image generations, and greedy text generations that are not streamed, with the same
//! decoding settings run together through [`sightline_vision::batch_generate`] (equal-length
//! prompts share a batch, and batching never changes a token there); sampled or streamed text
//! generations then run one after another (each depends on nothing but its own prompt and
//! seed, so serializing them changes no answer; it costs throughput, not correctness).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;
use sightline_model::generate::{first_stop, generate_ids_with, GenerateOptions, Generation};
use sightline_model::llama::LogSoftmax;
use sightline_model::{Llama, LoadedModel, Tokenizer};
use sightline_vision::batch_generate::{BatchOutput, BatchPrompt, Decoding};
use sightline_vision::llava::{Llava, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX};
use sightline_vision::RgbImage;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// The log-probability of one prompt token given those before it, and the most likely tokens
/// at that position (id, log-probability), best first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f64,
    pub top: Vec<(u32, f64)>,
}

/// Per prompt, one entry for each token after the first.
pub type PromptLogprobs = Vec<TokenLogprob>;

/// What the worker runs: a text decoder, or a LLaVA model (whose decoder also answers the
/// text requests).
pub enum Served {
    Text(Box<LoadedModel>),
    Vision(Box<Llava>),
}

impl Served {
    fn decoder(&self) -> (&Llama, &Tokenizer) {
        match self {
            Served::Text(m) => (&m.model, &m.tokenizer),
            Served::Vision(l) => (&l.llm, &l.tokenizer),
        }
    }
}

/// Work for the model.
pub enum Job {
    /// Log-probabilities of every token of each prompt after the first, with `top` alternatives.
    Score {
        prompts: Vec<Vec<u32>>,
        top: usize,
        reply: oneshot::Sender<Result<Vec<PromptLogprobs>>>,
    },
    /// A generation; with `steps`, the tokens so far are sent after each step (streaming).
    Generate {
        prompt: Vec<u32>,
        opts: GenerateOptions,
        steps: Option<mpsc::UnboundedSender<Vec<u32>>>,
        reply: oneshot::Sender<Result<Generation>>,
    },
    /// A generation about images: `prompt` holds one `<image>` per image, in order.
    Image {
        prompt: String,
        images: Vec<RgbImage>,
        decoding: Decoding,
        seed: u64,
        reply: oneshot::Sender<Result<BatchOutput>>,
    },
}

/// Facts about the served model the HTTP layer needs without asking the worker.
#[derive(Clone)]
pub struct ModelFacts {
    pub tokenizer: Arc<Tokenizer>,
    pub vocab_size: usize,
    pub max_position: usize,
    /// Whether image parts are accepted (a LLaVA model is served).
    pub vision: bool,
}

/// The handle the HTTP layer holds: a queue into the worker.
#[derive(Clone)]
pub struct Engine {
    queue: mpsc::Sender<Job>,
    pub facts: ModelFacts,
}

/// Most jobs one wake-up of the worker takes from the queue.
const MAX_DRAIN: usize = 64;
/// Rows of logits materialized at once (a 32k vocabulary × 256 rows is 32 MiB of f32).
const LOGIT_ROWS: usize = 256;

impl Engine {
    /// Starts the worker thread on `served`; at most `queue` jobs wait for it.
    pub fn start(served: Served, batch_size: usize, queue: usize) -> Result<Self> {
        let (model, tokenizer) = served.decoder();
        let facts = ModelFacts {
            tokenizer: Arc::new(tokenizer.clone()),
            vocab_size: model.config.vocab_size,
            max_position: model.config.max_position_embeddings,
            vision: matches!(served, Served::Vision(_)),
        };
        let (tx, rx) = mpsc::channel(queue.max(1));
        std::thread::Builder::new()
            .name("sightline-model".into())
            .spawn(move || worker(served, batch_size.max(1), rx))?;
        Ok(Self { queue: tx, facts })
    }

    /// Queues a job; waits while the queue is full.
    pub async fn submit(&self, job: Job) -> Result<()> {
        self.queue.send(job).await.map_err(|_| Error::EngineStopped)
    }
}

fn worker(served: Served, batch_size: usize, mut rx: mpsc::Receiver<Job>) {
    let (model, tokenizer) = served.decoder();
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_DRAIN {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut scoring = Vec::new();
        let mut generating = Vec::new();
        let mut imaging = Vec::new();
        for job in jobs {
            match job {
                Job::Score {
                    prompts,
                    top,
                    reply,
                } => scoring.push((prompts, top, reply)),
                g @ Job::Generate { .. } => generating.push(g),
                Job::Image {
                    prompt,
                    images,
                    decoding,
                    seed,
                    reply,
                } => imaging.push(ImageJob {
                    prompt,
                    images,
                    decoding,
                    seed,
                    reply,
                }),
            }
        }
        if !scoring.is_empty() {
            run_scoring(model, batch_size, scoring);
        }
        if !imaging.is_empty() {
            match &served {
                Served::Vision(llava) => run_images(llava, batch_size, imaging),
                Served::Text(_) => {
                    for j in imaging {
                        let _ = j.reply.send(Err(Error::Request(
                            "image input needs a LLaVA model; this server runs a text decoder"
                                .into(),
                        )));
                    }
                }
            }
        }
        // Greedy, unstreamed text generations run together (see `run_text_batch`); the rest
        // one at a time.
        let (batched, serial): (Vec<Job>, Vec<Job>) = generating.into_iter().partition(|j| {
            matches!(j, Job::Generate { opts, steps: None, .. } if opts.temperature <= 0.0 && opts.stop_at_eos)
        });
        run_text_batch(model, tokenizer, batch_size, batched);
        for job in serial {
            if let Job::Generate {
                prompt,
                opts,
                steps,
                reply,
            } = job
            {
                let out = guarded(|| {
                    let mut hook = |toks: &[u32]| match &steps {
                        Some(tx) => tx.send(toks.to_vec()).is_ok(),
                        None => true,
                    };
                    Ok(generate_ids_with(
                        model, tokenizer, &prompt, &opts, &mut hook,
                    )?)
                });
                // The client may have gone; nothing to do then.
                let _ = reply.send(out);
            }
        }
    }
}

/// Greedy text generations of one drain, from any number of clients: those with the same
/// length limit and stop strings run through [`sightline_vision::batch_generate`] (equal-length
/// prompts share a batch of `batch_size`; a row computes exactly what it computes alone, and
/// greedy decoding is [`generate_ids`](sightline_model::generate::generate_ids)'s, so an answer
/// does not depend on who else asked). The text is cut at the first stop string, as a single
/// generation's is.
fn run_text_batch(model: &Llama, tok: &Tokenizer, batch_size: usize, jobs: Vec<Job>) {
    type Reply = oneshot::Sender<Result<Generation>>;
    let mut groups: Vec<(Decoding, Vec<(BatchPrompt, Reply)>)> = Vec::new();
    for job in jobs {
        let Job::Generate {
            prompt,
            opts,
            reply,
            ..
        } = job
        else {
            continue;
        };
        let embeds = guarded(|| {
            let ids = Tensor::from_slice(&prompt, (1, prompt.len()), model.device())
                .map_err(|e| Error::Request(e.to_string()))?;
            model
                .embed(&ids)?
                .squeeze(0)
                .map_err(|e| Error::Request(e.to_string()))
        });
        let embeds = match embeds {
            Ok(e) => e,
            Err(e) => {
                let _ = reply.send(Err(e));
                continue;
            }
        };
        let decoding = Decoding {
            max_new_tokens: opts.max_new_tokens,
            min_new_tokens: 0,
            sampling: None,
            stop: opts.stop,
        };
        let row = (BatchPrompt { embeds, seed: 0 }, reply);
        match groups.iter_mut().find(|(d, _)| *d == decoding) {
            Some((_, g)) => g.push(row),
            None => groups.push((decoding, vec![row])),
        }
    }
    for (decoding, group) in groups {
        let (prompts, replies): (Vec<BatchPrompt>, Vec<Reply>) = group.into_iter().unzip();
        let mut replies: Vec<Option<Reply>> = replies.into_iter().map(Some).collect();
        let run = guarded(|| {
            sightline_vision::batch_generate::generate_batched(
                model,
                tok,
                &prompts,
                &decoding,
                batch_size,
                &mut |done| {
                    for (k, out) in done {
                        let mut text = out.text.clone();
                        if let Some(cut) = first_stop(&text, &decoding.stop) {
                            text.truncate(cut);
                        }
                        if let Some(reply) = replies[*k].take() {
                            let _ = reply.send(Ok(Generation {
                                text,
                                tokens: out.tokens.clone(),
                            }));
                        }
                    }
                    Ok(())
                },
            )
            .map_err(|e| Error::Request(e.to_string()))
        });
        if let Err(e) = run {
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(Error::Request(e.to_string())));
            }
        }
    }
}

/// Runs `f`, turning a panic into an error so one bad request cannot stop the worker.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Request(
            "internal error: the model panicked on this request".into(),
        ))
    })
}

type ScoreJob = (
    Vec<Vec<u32>>,
    usize,
    oneshot::Sender<Result<Vec<PromptLogprobs>>>,
);

/// Scores every prompt of every job together, longest first in batches, and answers each job.
fn run_scoring(model: &Llama, batch_size: usize, jobs: Vec<ScoreJob>) {
    // (job, prompt) of every prompt, longest first.
    let mut order: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, (prompts, _, _))| (0..prompts.len()).map(move |p| (j, p)))
        .collect();
    order.sort_by_key(|&(j, p)| std::cmp::Reverse(jobs[j].0[p].len()));
    let mut results: Vec<Vec<Option<PromptLogprobs>>> =
        jobs.iter().map(|(p, _, _)| vec![None; p.len()]).collect();
    let mut failed: Vec<Option<String>> = vec![None; jobs.len()];
    for chunk in order.chunks(batch_size) {
        let prompts: Vec<(&[u32], usize)> = chunk
            .iter()
            .map(|&(j, p)| (jobs[j].0[p].as_slice(), jobs[j].1))
            .collect();
        match guarded(|| score_batch(model, &prompts)) {
            Ok(scored) => {
                for (&(j, p), s) in chunk.iter().zip(scored) {
                    results[j][p] = Some(s);
                }
            }
            Err(e) => {
                for &(j, _) in chunk {
                    failed[j] = Some(e.to_string());
                }
            }
        }
    }
    for (((_, _, reply), res), fail) in jobs.into_iter().zip(results).zip(failed) {
        let answer = match fail {
            Some(msg) => Err(Error::Request(msg)),
            None => res
                .into_iter()
                .map(|r| {
                    r.ok_or_else(|| Error::Request("internal: a prompt was not scored".into()))
                })
                .collect(),
        };
        let _ = reply.send(answer);
    }
}

/// One right-padded forward over `prompts` (ids, top-k); the rows of prompt `b` at positions
/// `0..n-1` predict its tokens `1..n`.
fn score_batch(model: &Llama, prompts: &[(&[u32], usize)]) -> Result<Vec<PromptLogprobs>> {
    let dev = model.device();
    let width = prompts
        .iter()
        .map(|(p, _)| p.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    if width == 0 {
        return Ok(vec![Vec::new(); prompts.len()]);
    }
    let mut ids = Vec::with_capacity(prompts.len() * width);
    let mut rows = Vec::new();
    for (b, (p, _)) in prompts.iter().enumerate() {
        let input = &p[..p.len().saturating_sub(1)];
        ids.extend(input);
        ids.extend(std::iter::repeat_n(0u32, width - input.len()));
        rows.extend((0..input.len()).map(|r| (b * width + r) as u32));
    }
    let candle = |e: candle_core::Error| Error::Model(e.into());
    let ids = Tensor::from_vec(ids, (prompts.len(), width), dev).map_err(candle)?;
    let hidden = model
        .forward_hidden(&ids, None)?
        .flatten_to(1)
        .map_err(candle)?;
    let vocab = model.config.vocab_size;
    let mut out: Vec<PromptLogprobs> = Vec::with_capacity(prompts.len());
    let mut current: PromptLogprobs = Vec::new();
    let mut owner = 0usize;
    // Targets in row order: prompt b's tokens 1..n.
    let targets: Vec<(usize, u32)> = prompts
        .iter()
        .enumerate()
        .flat_map(|(b, (p, _))| p.iter().skip(1).map(move |&t| (b, t)))
        .collect();
    for (c, rchunk) in rows.chunks(LOGIT_ROWS).enumerate() {
        let idx = Tensor::new(rchunk, dev).map_err(candle)?;
        let h = hidden.index_select(&idx, 0).map_err(candle)?;
        let logits: Vec<f32> = model
            .logits(&h)?
            .flatten_all()
            .and_then(|l| l.to_vec1())
            .map_err(candle)?;
        for (r, row) in logits.chunks(vocab).enumerate() {
            let (b, target) = targets[c * LOGIT_ROWS + r];
            while owner < b {
                out.push(std::mem::take(&mut current));
                owner += 1;
            }
            current.push(row_logprobs(row, target, prompts[b].1));
        }
    }
    while out.len() < prompts.len() {
        out.push(std::mem::take(&mut current));
    }
    Ok(out)
}

/// Where an image generation's answer goes.
type ImageReply = oneshot::Sender<Result<BatchOutput>>;

/// An image generation waiting in the worker.
struct ImageJob {
    prompt: String,
    images: Vec<RgbImage>,
    decoding: Decoding,
    seed: u64,
    reply: oneshot::Sender<Result<BatchOutput>>,
}

/// Runs the image jobs of one drain: those with equal decoding settings together (the
/// evaluator's `LlavaLm` runs its windows the same way), each prompt spliced with its images'
/// features. A job whose prompt or images cannot be prepared is answered alone.
fn run_images(llava: &Llava, batch_size: usize, jobs: Vec<ImageJob>) {
    let mut groups: Vec<(Decoding, Vec<(BatchPrompt, ImageReply)>)> = Vec::new();
    for job in jobs {
        match guarded(|| image_prompt(llava, &job.prompt, &job.images)) {
            Ok(embeds) => {
                let prompt = BatchPrompt {
                    embeds,
                    seed: job.seed,
                };
                match groups.iter_mut().find(|(d, _)| *d == job.decoding) {
                    Some((_, g)) => g.push((prompt, job.reply)),
                    None => groups.push((job.decoding, vec![(prompt, job.reply)])),
                }
            }
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    for (decoding, group) in groups {
        let (prompts, replies): (Vec<BatchPrompt>, Vec<_>) = group.into_iter().unzip();
        let mut replies: Vec<Option<ImageReply>> = replies.into_iter().map(Some).collect();
        let run = guarded(|| {
            llava
                .generate_batched(&prompts, &decoding, batch_size, &mut |done| {
                    for (k, out) in done {
                        if let Some(reply) = replies[*k].take() {
                            let _ = reply.send(Ok(out.clone()));
                        }
                    }
                    Ok(())
                })
                .map_err(refused)
        });
        if let Err(e) = run {
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(match &e {
                    Error::Refused(m) => Error::Refused(m.clone()),
                    e => Error::Request(e.to_string()),
                }));
            }
        }
    }
}

/// A LLaVA error as the server's: what the request asked that the model cannot do (placeholders,
/// length) is the client's to fix; anything else is the server's.
fn refused(e: sightline_vision::Error) -> Error {
    match e {
        sightline_vision::Error::Request(m) => Error::Refused(m),
        e => Error::Request(e.to_string()),
    }
}

/// The spliced embeddings `[len, hidden]` of a prompt with one `<image>` per image, `<image>`
/// written as the checkpoint expects (as the evaluator's `LlavaLm` does).
fn image_prompt(llava: &Llava, prompt: &str, images: &[RgbImage]) -> Result<Tensor> {
    let vision = refused;
    let token = llava.image_prompt_token();
    let text = if token == IMAGE_PLACEHOLDER {
        prompt.to_string()
    } else {
        prompt.replace(IMAGE_PLACEHOLDER, &token)
    };
    let ids = llava.tokenize(&text).map_err(vision)?;
    let markers = ids.iter().filter(|&&t| t == IMAGE_TOKEN_INDEX).count();
    if markers != images.len() {
        return Err(Error::Refused(format!(
            "the conversation has {markers} `<image>` placeholder(s) for {} image(s)",
            images.len()
        )));
    }
    let candle = |e: candle_core::Error| Error::Request(e.to_string());
    let features = images
        .iter()
        .enumerate()
        .map(|(i, rgb)| {
            let px = llava
                .pixels_from_rgb(rgb, Path::new(&format!("<image {i}>")))
                .map_err(vision)?;
            llava
                .image_features(&px.unsqueeze(0).map_err(candle)?)
                .map_err(vision)?
                .squeeze(0)
                .map_err(candle)
        })
        .collect::<Result<Vec<_>>>()?;
    llava.splice(&ids, &features).map_err(vision)
}

/// The target's log-probability (exactly as in-process scoring computes it) and the `k` most
/// likely tokens' by the same formula, from one pass of the row's log-softmax.
fn row_logprobs(row: &[f32], target: u32, k: usize) -> TokenLogprob {
    let norm = LogSoftmax::of(row);
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &x) in row.iter().enumerate() {
            if best.len() < k || x > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, y)| y >= x);
                best.insert(at, (i as u32, x));
                best.truncate(k);
            }
        }
    }
    TokenLogprob {
        logprob: norm.logprob(row[target as usize]),
        top: best
            .into_iter()
            .map(|(i, x)| (i, norm.logprob(x)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_tokens_are_sorted_and_consistent_with_the_target() {
        let row = [0.5f32, 3.0, -1.0, 3.0, 2.0];
        let t = row_logprobs(&row, 4, 3);
        // Ties keep the lower id first, as argmax does.
        assert_eq!(
            t.top.iter().map(|&(i, _)| i).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        assert_eq!(t.top[2].1, t.logprob);
        let total: f64 = row
            .iter()
            .map(|&x| (x as f64 - 3.0).exp())
            .sum::<f64>()
            .ln();
        assert!((t.top[0].1 + total).abs() < 1e-12);
        assert!(row_logprobs(&row, 0, 0).top.is_empty());
    }
}
