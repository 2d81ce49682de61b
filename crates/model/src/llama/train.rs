//! Training the decoder: which weights train, their names, LoRA dropout, and the forward and
//! backward with per-layer gradient checkpointing.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::layers::{Ctx, Slot};
use super::Llama;
use crate::error::{Error, Result};
use crate::lora::layer::lock_rng;
use crate::lora::{LoraLayer, LoraSpec};
use crate::param::NamedParam;

impl Llama {
    /// Base weights with their HF names (frozen and trainable).
    pub fn base_params(&self) -> &[NamedParam] {
        &self.base
    }

    /// The settings of fresh (trainable) LoRA adapters, when the model has them.
    pub fn lora_spec(&self) -> Option<&LoraSpec> {
        self.lora_spec.as_ref()
    }

    /// LoRA matrices as PEFT's saved keys (`base_model.model.<module>.lora_A.weight`).
    pub fn lora_params(&self) -> Vec<NamedParam> {
        self.loras
            .iter()
            .flat_map(|(module, l)| l.named_params(module))
            .collect()
    }

    /// The LoRA layers (fresh ones share one dropout stream).
    pub fn lora_layers(&self) -> impl Iterator<Item = &LoraLayer> {
        self.loras.iter().map(|(_, l)| l)
    }

    /// Every trainable tensor of the decoder (base weights under full fine-tuning, LoRA
    /// matrices under LoRA), in a fixed order.
    pub fn trainable(&self) -> Vec<NamedParam> {
        let mut out: Vec<NamedParam> = self
            .base
            .iter()
            .filter(|p| p.param.var().is_some())
            .cloned()
            .collect();
        out.extend(
            self.lora_params()
                .into_iter()
                .filter(|p| p.param.var().is_some()),
        );
        out
    }

    /// Final-norm hidden states `[b, t, hidden]` for input embeddings `[b, t, hidden]`
    /// (transformers' `inputs_embeds=`), positions `0..t`. `train` turns LoRA dropout on.
    pub fn forward_hidden_train(&self, embeds: &Tensor, train: bool) -> Result<Tensor> {
        self.run(embeds, super::Cache::None, train)
    }

    /// Forward and backward with gradient checkpointing per decoder layer: the memory of a
    /// step holds each layer's input instead of every layer's activations, for one extra
    /// forward of the decoder.
    ///
    /// The forward runs layer by layer on detached inputs, keeping only those inputs. `head`
    /// gets the final-norm hidden states `[b, t, hidden]` and returns the scalar to
    /// differentiate (None: nothing to backpropagate). The backward then goes down the layers:
    /// each is recomputed from its kept input as a fresh `Var`, `Σ out · g` is differentiated,
    /// and the input's gradient becomes the next `g`; finally `Σ embeds · g` carries the
    /// gradient into whatever built `embeds` (`embed_tokens`, a projector). Every partial
    /// gradient store goes to `on_grads`, which must add (not assign) what it reads: a tied
    /// `embed_tokens`/`lm_head` gets a share from the head and one from the embeddings. It may
    /// take the parameters' gradients out of the store (to free them early), not the
    /// checkpoint inputs'.
    ///
    /// LoRA dropout draws its masks again in the recomputation, so the dropout stream is
    /// rewound to where each layer's first forward started and left where the forward ended:
    /// gradients and later steps are the same as without checkpointing.
    ///
    /// Generic in the callbacks' error type `E`, so that a trainer's own errors pass through.
    pub fn checkpointed_backward<E>(
        &self,
        embeds: &Tensor,
        train: bool,
        head: impl FnOnce(&Tensor) -> std::result::Result<Option<Tensor>, E>,
        mut on_grads: impl FnMut(&mut GradStore) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E>
    where
        E: From<Error> + From<candle_core::Error>,
    {
        let (b, t, hs) = self.check_embeds(embeds, 0)?;
        let ctx = Ctx {
            b,
            t,
            offset: 0,
            rope: &self.rope,
            residual: self.residual_dtype(),
        };
        let embeds = embeds.to_dtype(ctx.residual)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut xs = embeds.reshape((b * t, hs))?.detach();
        for l in &self.layers {
            let state = self.rng_state()?;
            // Through a `Var`, as the recomputation below: the kernels then take the same
            // path (with backward) both times and give the same bits.
            let x = Var::from_tensor(&xs)?;
            let out = l.forward(x.as_tensor(), &ctx, Slot::None, train)?.detach();
            inputs.push((std::mem::replace(&mut xs, out), state));
        }
        let after_forward = self.rng_state()?;
        let top = Var::from_tensor(&xs)?;
        drop(xs);
        let hidden = self.norm.forward(top.as_tensor())?.reshape((b, t, hs))?;
        let Some(loss) = head(&hidden)? else {
            return Ok(());
        };
        drop(hidden);
        let mut store = loss.backward()?;
        on_grads(&mut store)?;
        let mut g = input_grad(&store, &top)?;
        drop((store, top));
        while let Some((input, state)) = inputs.pop() {
            self.rewind(&state)?;
            let x = Var::from_tensor(&input)?;
            drop(input);
            let out = self.layers[inputs.len()].forward(x.as_tensor(), &ctx, Slot::None, train)?;
            let mut store = (out * &g)?.sum_all()?.backward()?;
            on_grads(&mut store)?;
            g = input_grad(&store, &x)?;
        }
        self.rewind(&after_forward)?;
        if embeds.track_op() {
            let mut store = (embeds.reshape((b * t, hs))? * g)?.sum_all()?.backward()?;
            on_grads(&mut store)?;
        }
        Ok(())
    }

    /// A copy of the LoRA dropout stream (None without fresh adapters).
    fn rng_state(&self) -> Result<Option<ChaCha8Rng>> {
        match &self.lora_rng {
            Some(r) => Ok(Some(lock_rng(r)?.clone())),
            None => Ok(None),
        }
    }

    /// Puts the LoRA dropout stream back to a copy taken by [`Llama::rng_state`].
    fn rewind(&self, state: &Option<ChaCha8Rng>) -> Result<()> {
        if let (Some(r), Some(s)) = (&self.lora_rng, state) {
            *lock_rng(r)? = s.clone();
        }
        Ok(())
    }
}

/// The gradient a backward pass gave the checkpointed activation `x` (a detached copy).
fn input_grad(store: &GradStore, x: &Var) -> Result<Tensor> {
    store.get(x.as_tensor()).map(Tensor::detach).ok_or_else(|| {
        Error::Config("checkpointed backward: no gradient reached a layer input".into())
    })
}
