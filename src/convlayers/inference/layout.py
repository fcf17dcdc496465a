"""Choose each value's memory layout: NCHW, or channels-last (NHWC).

A *segment* is a connected run of nodes that can all work channels-last: depthwise
convolutions (one filter per channel), convolutions of one group (any kernel, stride, padding
and dilation), max pools, adds and activations left unfused, and dense convolutions of at most
:data:`STEM_CHANNELS` input channels (a stem: it reads its NCHW input as it is and writes
channels-last). A segment with a depthwise convolution or a convolution of one group other
than a stride-1 1x1 one (so any CNN's body: MobileNetV2, EfficientNet-Lite0, ResNet) runs
channels-last: a depthwise convolution works on whole vectors of channels
(:mod:`convlayers.inference.channels_last`), a 3x3 stride-1 one of enough channels runs
Winograd along vectors of channels (:mod:`convlayers.inference.winograd_last`), and any other
convolution is a direct one whose register tiles of pixels by output channels sum every tap
in place (:mod:`convlayers.inference.conv_last`). Grouped convolutions stay NCHW, and so do segments
of stride-1 1x1 convolutions alone: converting around them would cost more than it saves.

Conversions go where a layout changes, once per value: ``to_nhwc`` before the first
channels-last reader of an NCHW value, ``to_nchw`` before an NCHW reader of a channels-last
value, and before the output. A global average pool reads either layout, so MobileNetV2,
EfficientNet-Lite0 and the ResNets (stem, body, pool, linear) convert nothing.
"""

from __future__ import annotations

from convlayers.inference.graph import Graph, Node

__all__ = ["STEM_CHANNELS", "channels_last_candidate", "choose_layouts", "is_dense",
           "is_depthwise", "is_pointwise", "reads_nchw"]


def is_depthwise(node: Node, g: Graph) -> bool:
    """One filter per channel, as many outputs as inputs."""
    w, groups = node.attrs["weight"], node.attrs["groups"]
    c_in = g.shapes[node.inputs[0]][0]
    return bool(groups == c_in and w.shape[0] == c_in and w.shape[1] == 1)


def is_pointwise(node: Node) -> bool:
    """A stride-1 1x1 convolution of one group with no padding: one product per image."""
    a = node.attrs
    return bool(a["weight"].shape[2:] == (1, 1) and a["groups"] == 1 and not any(a["pads"])
                and a["stride"] == (1, 1))


#: Input channels up to which a dense convolution (a network's stem, reading the image) may
#: start a channels-last segment: it reads its NCHW input in place and writes channels-last
#: (:func:`convlayers.inference.channels_last.dense_to_channels_last`), one splat input value
#: per tap against a row of output channels.
STEM_CHANNELS = 4


def reads_nchw(node: Node, g: Graph) -> bool:
    """A stem: a dense convolution of few input channels whose input has no channels-last
    producer (the image, or an NCHW layer's output). Channels-last, it still reads NCHW."""
    if not (node.op == "conv" and node.attrs["groups"] == 1 and node.attrs["residual"] is None
            and g.shapes[node.inputs[0]][0] <= STEM_CHANNELS and not is_pointwise(node)):
        return False
    producer = next((n for n in g.nodes if n.output == node.inputs[0]), None)
    return producer is None or not channels_last_candidate(producer, g)


def is_dense(node: Node, g: Graph) -> bool:
    """A convolution of one group that is neither a stride-1 1x1 one nor a stem: the
    channels-last direct kernel's (:mod:`convlayers.inference.conv_last`)."""
    return bool(node.op == "conv" and node.attrs["groups"] == 1 and not is_pointwise(node)
                and not reads_nchw(node, g))


def channels_last_candidate(node: Node, g: Graph) -> bool:
    """Whether ``node`` has a channels-last step (and all its values are 3-D maps)."""
    if node.op in ("add", "act", "maxpool"):
        return len(g.shapes[node.output]) == 3
    return node.op == "conv" and (is_depthwise(node, g) or node.attrs["groups"] == 1)


def _reads(node: Node) -> list[int]:
    residual = node.attrs.get("residual")
    return list(node.inputs) + ([residual] if residual is not None else [])


def _segments(g: Graph) -> set[int]:
    """Output values of the nodes in channels-last segments."""
    candidates = {n.output: n for n in g.nodes if channels_last_candidate(n, g)}
    parent = {v: v for v in candidates}

    def find(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for value, node in candidates.items():
        if reads_nchw(node, g):
            continue  # its input is read NCHW whatever the segment
        for read in _reads(node):
            if read in candidates:
                parent[find(read)] = find(value)
    spatial = {find(v) for v, n in candidates.items()
               if n.op == "conv" and (is_depthwise(n, g) or is_dense(n, g))}
    return {v for v in candidates if find(v) in spatial}


def choose_layouts(g: Graph, channels_last: bool = True) -> Graph:
    """Mark channels-last values in ``g.channels_last`` and insert the conversions; return ``g``
    (changed in place). ``channels_last=False`` keeps every value NCHW."""
    last = _segments(g) if channels_last else set()
    converted: dict[tuple[int, bool], int] = {}
    nodes: list[Node] = []

    def convert(value: int, to_last: bool) -> int:
        key = (value, to_last)
        if key not in converted:
            out = len(g.shapes)
            g.shapes[out] = g.shapes[value]
            nodes.append(Node("to_nhwc" if to_last else "to_nchw", [value], out, [],
                              {"act": None}))
            converted[key] = out
            if to_last:
                last.add(out)
        return converted[key]

    for node in g.nodes:
        wants_last = node.output in last
        reads_last = wants_last and not (node.op == "conv" and reads_nchw(node, g))
        if node.op != "gap":  # the pool reads either layout
            node.inputs = [convert(v, reads_last) if (v in last) != reads_last else v
                           for v in node.inputs]
            residual = node.attrs.get("residual")
            if residual is not None and (residual in last) != wants_last:
                node.attrs["residual"] = convert(residual, wants_last)
        nodes.append(node)
    if g.output in last:
        g.output = convert(g.output, False)
    g.nodes = nodes
    g.channels_last = last
    return g
