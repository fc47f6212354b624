"""P4D, Prompting4Debugging (Chin et al. 2024): find a prompt whose noise prediction on the
UNLEARNED model matches the ORIGINAL model's prediction for the target prompt.

Loss `|| eps_unlearned(z_t, t, P_adv) - sg[eps_original(z_t, t, P_target)] ||²` on states
z_t of the original model's DDIM trajectory for the target prompt and the prompt's seed.
Learnable tokens are continuous embeddings projected to their nearest candidate token in
the forward pass, gradients passed straight through (PEZ), as P4D does; so the prompt is
always hard tokens. P4D-N: the learnable tokens are the whole prompt; P4D-K
(`insert_every: k`): one learnable token after every k tokens of the target prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trust.attacks.base import Attack, AttackPrompt, AttackTarget, PromptOutcome
from trust.attacks.text import Layout, candidate_tokens, token_embeddings
from trust.config import P4DParams
from trust.sampling import initial_noise


@torch.no_grad()
def trajectory(parts, prompt: str, seed: int, steps: int, guidance: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(states (S, C, h, w), timesteps (S,), eps of the conditional branch (S, C, h, w)) of the
    DDIM trajectory of `parts` for one prompt and seed."""
    sched = parts.sampling_scheduler()
    sched.set_timesteps(steps)
    cond, uncond = parts.encode_text([prompt]), parts.encode_text([""])
    x = initial_noise(parts, [seed]).to(parts.unet.device) * sched.init_noise_sigma
    states, ts, eps_c_all = [], [], []
    for t in sched.timesteps:
        model_in = sched.scale_model_input(torch.cat([x, x]), t)
        eps_u, eps_c = parts.unet(model_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        states.append(model_in[:1])
        ts.append(t)
        eps_c_all.append(eps_c)
        x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x, eta=0.0).prev_sample
    return torch.cat(states), torch.stack(ts).long().to(x.device), torch.cat(eps_c_all)


def nearest(z: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Index of the candidate embedding most cosine-similar to each row of z."""
    return (F.normalize(z, dim=-1) @ F.normalize(E, dim=-1).T).argmax(-1)


class P4D(Attack):
    name = "p4d"
    needs_original = True
    params: P4DParams

    @classmethod
    def default_params(cls) -> P4DParams:
        return P4DParams()

    def attack_one(self, target: AttackTarget, ap: AttackPrompt, index: int) -> PromptOutcome:
        p, parts = self.params, target.unlearned
        g = self.generator(index)
        states, ts, eps_ref = trajectory(target.original, ap.prompt, ap.seed, target.steps, ap.guidance)
        cand = candidate_tokens(parts.tokenizer)
        E = token_embeddings(parts)[cand.to(token_embeddings(parts).device)].detach()
        mode = "insert" if p.insert_every else "alone"
        layout = Layout.build(parts.tokenizer, ap.prompt, p.tokens, mode, p.insert_every)
        z = E[torch.randint(len(cand), (p.tokens,), generator=g).to(E.device)].clone().requires_grad_(True)
        opt = torch.optim.AdamW([z], lr=p.lr, weight_decay=p.weight_decay)
        n = len(ts)
        eval_idx = torch.linspace(0, n - 1, min(n, 8)).round().long().to(states.device)

        def loss_at(idx: torch.Tensor, z_hard: torch.Tensor) -> torch.Tensor:
            cond = layout.encode(parts, z_hard.unsqueeze(0)).expand(len(idx), -1, -1)
            eps = parts.unet(states[idx], ts[idx], encoder_hidden_states=cond).sample
            return ((eps - eps_ref[idx]) ** 2).mean()

        def objective(tokens: torch.Tensor) -> float:
            with torch.no_grad():
                return float(loss_at(eval_idx, E[tokens]))

        tokens = nearest(z.detach(), E)
        best_obj = objective(tokens)
        best_tokens = tokens
        out = PromptOutcome(ap.prompt, target.seeds(ap), ap.guidance, False, objective_start=best_obj)
        best_score = -1.0
        budget = self.steps_budget(p.steps)
        for step in range(budget):
            idx = torch.randint(n, (p.batch_timesteps,), generator=g).to(states.device)
            tokens = nearest(z.detach(), E)
            z_st = z + (E[tokens] - z).detach()  # forward: hard tokens; backward: to z
            loss = loss_at(idx, z_st)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out.history.append(float(loss.detach()))
            out.steps_run = step + 1
            tokens = nearest(z.detach(), E)
            if not torch.equal(tokens, best_tokens):
                obj = objective(tokens)
                if obj < best_obj:
                    best_obj, best_tokens = obj, tokens
            if (step + 1) % p.check_every == 0 or step + 1 == budget:
                text = layout.text(cand[best_tokens.cpu()])
                hit, score, images = target.check(text, ap)
                if hit or score > best_score:
                    best_score = score
                    out.adversarial, out.score, out.images = text, score, images
                    out.embedding = z.detach().clone()
                if hit:
                    out.broken = True
                    break
        out.objective_end = best_obj
        return out
