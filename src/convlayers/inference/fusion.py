"""Graph rewrites for inference: fold pads and BatchNorms into convolutions, fuse epilogues.

Each rewrite merges a node into the single producer of its input, which then takes over the
node's output value, so nothing after it changes:

* ``pad -> conv``: the zeros become the convolution's own (possibly asymmetric) padding;
* ``conv -> bn``: ``w' = w*s``, ``b' = (b - mean)*s + beta`` per output channel, in float64;
* ``conv/bn/add -> add``: the residual is added in the convolution's epilogue, when the
  other operand is computed before the convolution;
* ``conv/linear/bn/add -> act``: the activation runs in the producer's epilogue.

A rewrite applies only where the producer's output has no other reader.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from convlayers.inference.graph import Graph, Node

__all__ = ["fuse_blocks", "fuse_graph"]


def _uses(g: Graph) -> Counter[int]:
    uses: Counter[int] = Counter(v for n in g.nodes for v in n.inputs)
    for n in g.nodes:
        if n.op == "conv" and n.attrs["residual"] is not None:
            uses[n.attrs["residual"]] += 1
    uses[g.output] += 1
    return uses


def _absorb(g: Graph, producer: Node, consumer: Node) -> None:
    """``producer`` now also does ``consumer``'s work and writes its output value."""
    producer.output = consumer.output
    producer.names += consumer.names
    g.nodes.remove(consumer)


def _fold_bn(conv: Node, bn: Node) -> None:
    scale, shift = bn.attrs["scale"], bn.attrs["shift"]
    weight = conv.attrs["weight"]
    conv.attrs["weight"] = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    bias = conv.attrs["bias"]
    conv.attrs["bias"] = (np.zeros_like(shift) if bias is None else bias) * scale + shift


def _try(g: Graph, node: Node, producers: dict[int, int], uses: Counter[int]) -> bool:
    index = g.nodes.index(node)
    if node.op == "add":
        for k in (0, 1):
            source, other = node.inputs[k], node.inputs[1 - k]
            if source not in producers or uses[source] != 1:
                continue
            p = g.nodes[producers[source]]
            other_ready = other not in producers or producers[other] < producers[source]
            if (p.op == "conv" and p.attrs["act"] is None and p.attrs["residual"] is None
                    and other_ready and node.attrs["act"] is None):
                p.attrs["residual"] = other
                _absorb(g, p, node)
                return True
        return False
    source = node.inputs[0]
    if source not in producers or uses[source] != 1:
        return False
    p = g.nodes[producers[source]]
    assert producers[source] < index
    if node.op == "conv" and p.op == "pad":
        top, bottom, left, right = node.attrs["pads"]
        pt, pb, pl, pr = p.attrs["pads"]
        node.attrs["pads"] = (top + pt, bottom + pb, left + pl, right + pr)
        node.inputs = list(p.inputs)
        node.names = p.names + node.names
        g.nodes.remove(p)
        return True
    if node.op == "bn" and p.op == "conv" and p.attrs["act"] is None and p.attrs["residual"] is None:
        _fold_bn(p, node)
        _absorb(g, p, node)
        return True
    if node.op == "act" and p.op in ("conv", "linear", "bn", "add") and p.attrs.get("act") is None:
        p.attrs["act"] = node.attrs["act"]
        _absorb(g, p, node)
        return True
    return False


def fuse_graph(g: Graph) -> Graph:
    """Apply the rewrites until none applies; return ``g`` (changed in place)."""
    for n in g.nodes:
        if n.op == "bn":
            n.attrs.setdefault("act", None)
    changed = True
    while changed:
        changed = False
        producers = {n.output: i for i, n in enumerate(g.nodes)}
        uses = _uses(g)
        for node in list(g.nodes):
            if _try(g, node, producers, uses):
                changed = True
                break
    return g


def fuse_blocks(g: Graph) -> Graph:
    """Merge each channels-last ``1x1 -> depthwise -> 1x1`` run (either 1x1 layer may be
    missing, not both) into one ``block`` node that
    :class:`convlayers.inference.steps_channels_last.BlockLast` runs in a single pass
    (:mod:`convlayers.inference.block_last`); return ``g`` (changed in place).

    The layers' values between them must be read by the next layer only, and the expansion
    must add no residual (its output is never stored). The block node reads the first
    layer's input, writes the last one's output and adds the last one's residual; its
    ``attrs`` keep the three nodes (``expand``, ``depthwise``, ``project``, ``None`` where
    missing)."""
    from convlayers.inference.layout import is_depthwise, is_pointwise

    def pointwise(n: Node) -> bool:
        return n.op == "conv" and is_pointwise(n)

    uses = _uses(g)
    producers = {n.output: n for n in g.nodes}
    last = g.channels_last
    nodes: list[Node] = []
    taken: set[int] = set()  # ids of nodes already in a block (a 1x1 layer between two
    # depthwise ones projects the first block; it does not also expand the second)
    for node in g.nodes:
        if not (node.op == "conv" and node.output in last and is_depthwise(node, g)
                and node.inputs[0] in last):
            continue
        expand = producers.get(node.inputs[0])
        if not (expand is not None and id(expand) not in taken and pointwise(expand)
                and expand.attrs["residual"] is None and uses[expand.output] == 1
                and expand.inputs[0] in last):
            expand = None
        consumers = [n for n in g.nodes if node.output in n.inputs]
        project = consumers[0] if len(consumers) == 1 else None
        if not (project is not None and pointwise(project) and uses[node.output] == 1
                and node.attrs["residual"] is None and project.output in last):
            project = None
        if expand is None and project is None:
            continue
        taken.update(id(p) for p in (expand, node, project) if p is not None)
        nodes.append(Node("block", [(expand or node).inputs[0]], (project or node).output,
                          [*(expand.names if expand else []), *node.names,
                           *(project.names if project else [])],
                          {"expand": expand, "depthwise": node, "project": project,
                           "residual": (project or node).attrs["residual"], "act": None}))
    for block in nodes:
        parts = [p for p in (block.attrs["expand"], block.attrs["depthwise"],
                             block.attrs["project"]) if p is not None]
        # where the last layer ran: the residual it adds may come from a node between them
        at = g.nodes.index(parts[-1]) - (len(parts) - 1)
        for p in parts:
            g.nodes.remove(p)
        g.nodes.insert(at, block)
    return g
