"""verify's default tolerances, in one place for the CLI, the API and :mod:`surgery.verify`
(see :class:`surgery.verify.Tolerance` for the two rules they bound). Imports nothing: the
CLI's front door reads them without loading verify's dependencies."""

#: allclose rule, absolute part: ``|a - b| <= ATOL + RTOL * |b|`` for every element.
ATOL = 1e-5
#: allclose rule, relative part.
RTOL = 1e-4
#: scale rule: ``max |a - b| <= SCALE_RTOL * max |b|``.
SCALE_RTOL = 1e-5
