"""Chapter 2's exercise checks: right answers pass, typical mistakes get a specific hint."""

from servelab.exercises import ch2


def test_predicted_pss(capsys):
    kw = dict(shared_mib=300.0, private_mib_per_worker=20.0, workers=4, master_mib=30.0)
    assert ch2.check_predicted_pss(30 + 300 + 80, **kw)
    assert not ch2.check_predicted_pss(30 + 4 * 320, **kw)
    assert "summed RSS" in capsys.readouterr().out
    assert not ch2.check_predicted_pss(320, **kw)
    assert "one worker" in capsys.readouterr().out
    assert not ch2.check_predicted_pss(380, **kw)
    assert "master" in capsys.readouterr().out
    assert not ch2.check_predicted_pss(None, **kw)
    assert "not answered" in capsys.readouterr().out


def test_thread_limit(capsys):
    assert ch2.check_thread_limit(4.0, python_ms=5.0, torch_ms=15.0)
    assert not ch2.check_thread_limit(3.0, python_ms=5.0, torch_ms=15.0)
    assert "Python part too" in capsys.readouterr().out
    assert not ch2.check_thread_limit(0.25, python_ms=5.0, torch_ms=15.0)
    assert "inverse" in capsys.readouterr().out
    assert not ch2.check_thread_limit(20 / 15, python_ms=5.0, torch_ms=15.0)
    assert "divide by python_ms" in capsys.readouterr().out


def test_oversubscription_penalty(capsys):
    assert ch2.check_oversubscription_penalty(20.0, cpu_ms_default=18.0, cpu_ms_one=15.0)
    assert ch2.check_oversubscription_penalty(20.6, cpu_ms_default=18.0, cpu_ms_one=15.0)
    assert not ch2.check_oversubscription_penalty(1.2, cpu_ms_default=18.0, cpu_ms_one=15.0)
    assert "percentage" in capsys.readouterr().out
    assert not ch2.check_oversubscription_penalty(-20.0, cpu_ms_default=18.0, cpu_ms_one=15.0)
    assert "Wrong way round" in capsys.readouterr().out


def test_rss_overstatement(capsys):
    assert ch2.check_rss_overstatement(2.5, workers_rss_mib=1000, workers_pss_mib=400)
    assert not ch2.check_rss_overstatement(0.4, workers_rss_mib=1000, workers_pss_mib=400)
    assert "Upside down" in capsys.readouterr().out
