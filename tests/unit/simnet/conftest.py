import pytest

from tests.harness.simnet import Sim


@pytest.fixture
def make_sim(tmp_path):
    """Sim(**options) in this test's directory (the lease databases live there)."""
    sims = []

    def make(**options):
        sims.append(Sim(tmp_path / f"sim{len(sims)}", **options))
        return sims[-1]
    yield make
    for sim in sims:
        for lh in sim.lighthouses:
            lh.leases.close()
    # every timer run did something: a deadline that fires and does nothing is a busy
    # spin on a real clock (tests/harness/simnet.py SimEngine.tick)
    for sim in sims:
        assert not sim.spins, f"timer runs that found nothing due: {dict(sim.spins)}"
