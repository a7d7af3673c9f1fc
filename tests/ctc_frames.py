"""Hand-built CTC emissions shared by the decoder and LM tests."""

import torch


def frames(spec: list[dict[str, float] | str], tok) -> torch.Tensor:
    """(T, V) log-probs. Each frame is a token string ("-" = blank) taking 0.9 of the mass,
    or a {token: prob} dict; the rest of the mass is spread unevenly (seeded) over the other
    tokens: flashlight breaks exact score ties arbitrarily, even between two identical calls."""
    v = len(tok.tokens)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for f in spec:
        dist = {f: 0.9} if isinstance(f, str) else dict(f)
        dist = {("<blank>" if k == "-" else k): p for k, p in dist.items()}
        row = torch.rand(v, generator=gen, dtype=torch.float64) + 0.5
        fixed = torch.tensor([tok.tokens.index(k) for k in dist])
        row[fixed] = 0.0
        row *= (1.0 - sum(dist.values())) / row.sum()
        row[fixed] = torch.tensor(list(dist.values()), dtype=torch.float64)
        rows.append(row.log())
    return torch.stack(rows).float()
