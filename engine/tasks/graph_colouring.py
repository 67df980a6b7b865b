"""Graph 3-colouring (GRAM, arXiv:2605.19376 §4.2, Table 1's second multi-solution task): codec, rule verifier,
conflict count and an enumerator of every colouring up to a permutation of the colours.

A puzzle is a graph on n vertices (8 or 10 in the paper); an answer gives every vertex one of three colours so that
no edge joins two vertices of the same colour. A graph usually has several colourings, so answers are judged by the
rules, never against one label.

Tokens. The paper encodes the input as the strict upper triangle of the adjacency matrix (n(n-1)/2 tokens: 0 PAD,
1 no edge, 2 edge) and the output as n colour tokens (3, 4, 5). TRM and GRAM map a sequence to a sequence of the same
length, so both live in ONE sequence of n(n-1)/2 + n tokens: the edge tokens of the pairs (0,1), (0,2), ..., (0,n-1),
(1,2), ..., (n-2,n-1) in that order, then one slot per vertex. A puzzle's vertex slots hold PAD (uncoloured); a label
copies the puzzle's edge tokens and holds colour 3, 4 or 5 in every vertex slot. Vocabulary: 6 tokens. A puzzle's
vertex slots are not read by the verifier or the enumerator: every vertex is to be coloured.

Colour permutation. Relabelling the three colours maps a colouring to another one, so colourings are counted (and
datasets store them) in canonical form only: colours renumbered by first occurrence (vertex 0 gets colour 0, the next
vertex with another colour gets colour 1, then colour 2). The verifier accepts any valid colouring; `canonical` maps
it to its class's representative, which is what coverage counts distinct answers by (`Task.canonical`).

Text: the upper triangle as n(n-1)/2 characters '0'/'1', optionally followed (after whitespace or not) by n colour
characters, '0', '1', '2', or '.' for uncoloured; whitespace is layout only. `to_text` writes the edge string alone
for an uncoloured graph, else "<edges> <colours>". Nested lists: the n x n 0/1 adjacency matrix (symmetric, zero
diagonal), or a dict {"adjacency": matrix or edge string, "colours": [n of 0/1/2/null]}. `decode` gives the vertex
colours [n of 0/1/2, None where a slot holds no colour]. Messages number vertices from 1, as rows and columns are.

Edge probability. The paper samples Erdős–Rényi G(n, p) graphs but does not state p. Measured over 20,000 graphs per
cell (seed 0; `engine.datasets.graph_colouring_build.measure`): share 3-colourable / mean canonical colourings of
those / share of those with at least 2 (median of those in brackets where measured):

    p      n = 8                      n = 10
    0.25   0.985 / 91.1 / 0.998       0.952 / 182.7 / 0.998
    0.30   0.957 / 53.2 / 0.993 (32)  0.870 /  79.9 / 0.989 (32)
    0.35   0.902 / 31.4 / 0.979 (16)  0.730 /  36.0 / 0.961 (14)
    0.40   0.807 / 18.7 / 0.950 (10)  0.540 /  16.8 / 0.907 (6)
    0.45   0.669 / 11.4 / 0.900       0.336 /   8.7 / 0.830

P = 0.35 (the default of `engine-data graph-colouring`): most graphs are 3-colourable (90% at n = 8, 73% at n = 10)
and almost all of those (96-98%) have several colourings, with a median of 14-16 (mean 31-36: a few sparse graphs
with isolated vertices have hundreds), so coverage is meaningful without the label sets exploding; almost none exceed
the search's 1,000-solution count limit (none of 20,000 at n = 8, 0.09% at n = 10). Sparser graphs have far more
colourings (p = 0.25: means of 91 and 183), denser ones are mostly not 3-colourable at n = 10 and more often have a
single colouring (p = 0.4: 9%).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from numbers import Integral

import numpy as np

from engine.tasks.base import PAD, PuzzleError, Task
from engine.tasks.symmetry import Symmetry

NO_EDGE, EDGE = 1, 2
COLOURS = (3, 4, 5)  # colour c (0, 1, 2) is token 3 + c
FIRST_COLOUR = COLOURS[0]
P = 0.35  # edge probability of the generated graphs (see the module docstring)


def n_edges(n: int) -> int:
    return n * (n - 1) // 2


def pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The vertex pair (i[k], j[k]), i < j, of edge token k: the upper triangle, row by row."""
    return np.triu_indices(n, 1)


def _vertex(v: int) -> str:
    return f"vertex {v + 1}"


def _edge_bit(value, where: str) -> int:
    if isinstance(value, str):
        if value in ("0", "1"):
            return int(value)
        raise PuzzleError(f"{where}: unexpected character {value!r} (allowed: '0' no edge, '1' edge)")
    if isinstance(value, Integral) and not isinstance(value, bool) and value in (0, 1):
        return int(value)
    raise PuzzleError(f"{where}: {value!r} is not 0 (no edge) or 1 (edge)")


def _colour(value, where: str) -> int:
    if value is None or value == ".":
        return PAD
    if isinstance(value, str) and value in ("0", "1", "2"):
        return FIRST_COLOUR + int(value)
    if isinstance(value, Integral) and not isinstance(value, bool) and value in (0, 1, 2):
        return FIRST_COLOUR + int(value)
    raise PuzzleError(f"{where}: {value!r} is not a colour (0, 1, 2, or '.'/null for uncoloured)")


def _matrix_edges(matrix, n: int) -> np.ndarray:
    """An n x n 0/1 adjacency matrix -> edge bits [n(n-1)/2], refusing asymmetry and loops (naming the cell)."""
    if not isinstance(matrix, (list, tuple)):
        raise PuzzleError(f"expected an adjacency matrix (a list of {n} lists), got {type(matrix).__name__}")
    if len(matrix) != n:
        raise PuzzleError(f"expected {n} rows, got {len(matrix)}")
    bits = np.zeros((n, n), np.int64)
    for r, row in enumerate(matrix):
        if not isinstance(row, (list, tuple)):
            raise PuzzleError(f"row {r + 1}: expected a list, got {type(row).__name__}")
        if len(row) != n:
            raise PuzzleError(f"row {r + 1} has {len(row)} cells, expected {n}")
        for c, v in enumerate(row):
            bits[r, c] = _edge_bit(v, f"row {r + 1}, column {c + 1}")
    for r in range(n):
        if bits[r, r]:
            raise PuzzleError(f"row {r + 1}, column {r + 1}: a vertex has no edge to itself (the diagonal is 0)")
    for r, c in zip(*pairs(n)):
        if bits[r, c] != bits[c, r]:
            raise PuzzleError(
                f"row {r + 1}, column {c + 1} is {bits[r, c]} but row {c + 1}, column {r + 1} is {bits[c, r]}: "
                "the adjacency matrix must be symmetric"
            )
    return bits[pairs(n)]


def _string_edges(text: str, n: int) -> np.ndarray:
    return np.array([_edge_bit(ch, f"edge character {k + 1}") for k, ch in enumerate(text)], np.int64)


def _split_text(text: str, n: int) -> tuple[str, str | None]:
    chars = "".join(text.split())
    e = n_edges(n)
    if len(chars) == e:
        return chars, None
    if len(chars) == e + n:
        return chars[:e], chars[e:]
    raise PuzzleError(
        f"expected {e} edge characters (the upper triangle of a {n}-vertex graph), optionally followed by {n} "
        f"colours, got {len(chars)} characters"
    )


def _check_length(tokens: np.ndarray, n: int) -> np.ndarray:
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.shape[-1:] != (n_edges(n) + n,):
        raise PuzzleError(f"expected {n_edges(n) + n} tokens for a {n}-vertex graph, got {tokens.shape[-1:]}")
    return tokens


def _vertices(n_tokens: int) -> int:
    """The vertex count n of a sequence of n(n-1)/2 + n = n(n+1)/2 tokens."""
    n = int(round(((8 * n_tokens + 1) ** 0.5 - 1) / 2))
    if n * (n + 1) // 2 != n_tokens:
        raise PuzzleError(f"expected n(n+1)/2 tokens for an n-vertex graph, got {n_tokens}")
    return n


def _neighbours(puzzle_tokens: np.ndarray) -> list[int]:
    """Adjacency bitmasks of the puzzle's graph; the vertex count is inferred from the token count."""
    tokens = np.asarray(puzzle_tokens, dtype=np.int64).reshape(-1)
    n = _vertices(tokens.size)
    edges = tokens[: n_edges(n)]
    for k in np.flatnonzero((edges != NO_EDGE) & (edges != EDGE)):
        i, j = pairs(n)
        raise PuzzleError(
            f"the edge slot of {_vertex(i[k])} and {_vertex(j[k])} holds token {edges[k]}, "
            f"neither no edge ({NO_EDGE}) nor edge ({EDGE})"
        )
    masks = [0] * n
    for i, j in zip(*(a[edges == EDGE] for a in pairs(n))):
        masks[i] |= 1 << int(j)
        masks[j] |= 1 << int(i)
    return masks


def colourings(puzzle_tokens: np.ndarray) -> Iterator[list[int]]:
    """Every valid 3-colouring of the puzzle's graph in canonical form (colours 0/1/2 by first occurrence), as the
    colour of each vertex, in lexicographic order. A depth-first search over the vertices in order: vertex v may
    take a colour no earlier neighbour has, and at most one colour beyond those already used (canonical form)."""
    masks = _neighbours(puzzle_tokens)
    n = len(masks)
    colour = [0] * n
    # by_colour[c]: bitmask of the vertices coloured c so far
    by_colour = [0, 0, 0]

    def place(v: int, used: int) -> Iterator[list[int]]:
        if v == n:
            yield list(colour)
            return
        for c in range(min(used + 1, 3)):
            if by_colour[c] & masks[v]:
                continue
            colour[v] = c
            by_colour[c] |= 1 << v
            yield from place(v + 1, max(used, c + 1))
            by_colour[c] &= ~(1 << v)

    yield from place(0, 0)


def count_colourings(puzzle_tokens: np.ndarray, limit: int | None = None) -> int:
    """How many canonical 3-colourings the puzzle's graph has, counting no further than `limit`."""
    return sum(1 for _ in islice(colourings(puzzle_tokens), limit))


def canonical(tokens: np.ndarray) -> np.ndarray:
    """Tokens [..., n(n+1)/2] with every row's colours renumbered by first occurrence over the vertex slots (the
    representative of its class under colour permutation); edge tokens and non-colour tokens are kept."""
    tokens = np.array(tokens)  # a copy, dtype kept
    n = _vertices(tokens.shape[-1])
    slots = tokens[..., n_edges(n) :]
    # each colour's first vertex (n where it is absent); ranking them gives its new number
    hits = slots[..., None] == np.array(COLOURS, slots.dtype)  # [..., n, 3]
    first = np.where(hits.any(-2), hits.argmax(-2), n)  # [..., 3]
    rank = np.argsort(np.argsort(first, axis=-1, kind="stable"), axis=-1)
    relabelled = FIRST_COLOUR + np.take_along_axis(rank, np.clip(slots.astype(np.int64) - FIRST_COLOUR, 0, 2), -1)
    tokens[..., n_edges(n) :] = np.where(hits.any(-1), relabelled, slots)
    return tokens


def conflicts(puzzle: np.ndarray, answer: np.ndarray) -> int:
    """The paper's conflict count (lower is better): edges of the puzzle's graph whose two ends hold the same colour
    in the answer. Uncoloured ends (or non-colour tokens) never conflict."""
    puzzle, answer = np.asarray(puzzle, np.int64), np.asarray(answer, np.int64)
    n = _vertices(puzzle.size)
    i, j = pairs(n)
    colours = answer[n_edges(n) :]
    a, b = colours[i], colours[j]
    return int(((puzzle[: n_edges(n)] == EDGE) & (a == b) & np.isin(a, COLOURS)).sum())


class GraphColouring(Task):
    """3-colouring of an n-vertex graph (see the module docstring for the tokens and text forms)."""

    vocab_size = 6
    many_answers = True

    def __init__(self, n: int = 8):
        if n < 2:
            raise ValueError(f"a graph needs at least 2 vertices, got {n}")
        self.n = n
        self.name = f"graph-colouring-{n}"
        self.n_edges = n_edges(n)
        self.seq_len = self.n_edges + n
        self._i, self._j = pairs(n)

    def encode(self, puzzle: str | list | dict) -> np.ndarray:
        n, colours = self.n, None
        if isinstance(puzzle, dict):
            unknown = set(puzzle) - {"adjacency", "colours"}
            if unknown or "adjacency" not in puzzle:
                raise PuzzleError(f"expected keys 'adjacency' and optionally 'colours', got {sorted(puzzle)}")
            colours, puzzle = puzzle.get("colours"), puzzle["adjacency"]
            if colours is not None and (not isinstance(colours, (list, tuple)) or len(colours) != n):
                raise PuzzleError(f"'colours' must be a list of {n} colours (0, 1, 2 or null)")
        if isinstance(puzzle, str):
            edges, text_colours = _split_text(puzzle, n)
            bits = _string_edges(edges, n)
            if text_colours is not None:
                if colours is not None:
                    raise PuzzleError("colours given twice: in the text and as 'colours'")
                colours = list(text_colours)
        elif isinstance(puzzle, (list, tuple)):
            bits = _matrix_edges(puzzle, n)
        else:
            raise PuzzleError(f"expected text, an adjacency matrix or a dict, got {type(puzzle).__name__}")
        tokens = np.full(self.seq_len, PAD, np.int64)
        tokens[: self.n_edges] = NO_EDGE + bits
        if colours is not None:
            tokens[self.n_edges :] = [_colour(c, _vertex(v)) for v, c in enumerate(colours)]
        return tokens

    def decode(self, tokens: np.ndarray) -> list[int | None]:
        slots = _check_length(tokens, self.n)[self.n_edges :]
        return [int(t) - FIRST_COLOUR if t in COLOURS else None for t in slots]

    def adjacency(self, tokens: np.ndarray) -> list[list[int]]:
        """The graph as an n x n 0/1 adjacency matrix (what `encode` accepts)."""
        edges = _check_length(tokens, self.n)[: self.n_edges]
        matrix = np.zeros((self.n, self.n), int)
        matrix[self._i, self._j] = matrix[self._j, self._i] = edges == EDGE
        return matrix.tolist()

    def to_text(self, tokens: np.ndarray) -> str:
        tokens = _check_length(tokens, self.n)
        edges = "".join("1" if t == EDGE else "0" for t in tokens[: self.n_edges])
        colours = self.decode(tokens)
        if all(c is None for c in colours):
            return edges
        return edges + " " + "".join("." if c is None else str(c) for c in colours)

    def render(self, tokens: np.ndarray) -> str:
        colours = self.decode(tokens)
        lines = []
        for v, (row, c) in enumerate(zip(self.adjacency(tokens), colours)):
            name = "." if c is None else "ABC"[c]
            lines.append(f"{v + 1:>3} {name}  " + " ".join("#" if x else "." for x in row))
        return "\n".join(lines)

    def canonical(self, tokens: np.ndarray) -> np.ndarray:
        _check_length(tokens, self.n)
        return canonical(tokens)

    def symmetry(self, rng: np.random.Generator) -> Symmetry:
        """A random relabelling of the vertices (edges and vertex slots move together; tokens unchanged)."""
        perm = rng.permutation(self.n)  # new vertex v is old vertex perm[v]
        index = np.zeros((self.n, self.n), np.int64)
        index[self._i, self._j] = index[self._j, self._i] = np.arange(self.n_edges)
        cells = np.concatenate([index[perm[self._i], perm[self._j]], self.n_edges + perm])
        return Symmetry(cells, np.arange(self.vocab_size))

    def check(self, puzzle: np.ndarray, answer: np.ndarray) -> str | None:
        puzzle, answer = _check_length(puzzle, self.n), _check_length(answer, self.n)
        for k in range(self.n_edges):
            if answer[k] != puzzle[k]:
                u, v = _vertex(self._i[k]), _vertex(self._j[k])
                if answer[k] not in (NO_EDGE, EDGE):
                    return f"the edge slot of {u} and {v} holds token {answer[k]}, not the puzzle's {puzzle[k]}"
                return f"the edge between {u} and {v} was {'removed' if puzzle[k] == EDGE else 'added'}"
        slots = answer[self.n_edges :]
        for v, t in enumerate(slots):
            if t == PAD:
                return f"{_vertex(v)} is uncoloured"
            if t not in COLOURS:
                return f"{_vertex(v)} holds token {t}, not a colour ({', '.join(map(str, COLOURS))})"
        for i, j in zip(self._i[puzzle[: self.n_edges] == EDGE], self._j[puzzle[: self.n_edges] == EDGE]):
            if slots[i] == slots[j]:
                return f"{_vertex(i)} and {_vertex(j)} share an edge and colour {slots[i] - FIRST_COLOUR}"
        return None

    def verify_batch(self, puzzles: np.ndarray, answers: np.ndarray) -> np.ndarray:
        puzzles, answers = _check_length(puzzles, self.n), _check_length(answers, self.n)
        e = self.n_edges
        slots = answers[..., e:]
        same = slots[..., self._i] == slots[..., self._j]
        return (
            (answers[..., :e] == puzzles[..., :e]).all(-1)
            & ((slots >= COLOURS[0]) & (slots <= COLOURS[-1])).all(-1)
            & ~((puzzles[..., :e] == EDGE) & same).any(-1)
        )
