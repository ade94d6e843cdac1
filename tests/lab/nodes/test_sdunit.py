"""Unit tests of sdunit.py (run by tests/tests/packaging.rs:
`python3 -m unittest test_sdunit` in this directory)."""

import json
import os
import tempfile
import unittest
from pathlib import Path

import sdunit

SENSOR_LIKE = """\
# comment
[Unit]
Description=x

[Service]
Type=exec
Environment=VIGIL_NODE=%H
Environment="A=one two" B=b
Environment=VIGIL_TOKEN_FILE=%d/sensor.token
EnvironmentFile=/etc/vigil/sensor.env
EnvironmentFile=-/etc/vigil/absent.env
ExecStart=/usr/bin/vigil-sensor run \\
    --flag=/etc/vigil/x
LoadCredential=sensor.token:/etc/vigil/sensor.token
"""


class CommandTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = Path(self.tmp.name)
        self.etc = d / "etc"
        self.etc.mkdir()
        (self.etc / "sensor.env").write_text(
            "# shipped comment\n; other comment\n\nVIGIL_NODE=fromfile\n"
            "VIGIL_DECIDERS=\"http://a:1,http://b:2\"\nexport C=c\n")
        (self.etc / "sensor.token").write_text("secret\n")
        self.unit = d / "vigil-sensor.service"
        self.unit.write_text(SENSOR_LIKE)
        self.creds = d / "creds"
        self.maps = [("/usr/", "/R/usr/"), ("/etc/vigil/", f"{self.etc}/")]

    def tearDown(self):
        self.tmp.cleanup()

    def test_sensor_like_unit(self):
        c = sdunit.command(self.unit, self.maps, host="compute1", creds=self.creds)
        self.assertEqual(c["argv"], ["/R/usr/bin/vigil-sensor", "run",
                                     f"--flag={self.etc}/x"])
        # EnvironmentFile= wins over Environment=, as in systemd.
        self.assertEqual(c["env"]["VIGIL_NODE"], "fromfile")
        self.assertEqual(c["env"]["VIGIL_DECIDERS"], "http://a:1,http://b:2")
        self.assertEqual(c["env"]["A"], "one two")
        self.assertEqual(c["env"]["C"], "c")
        self.assertEqual(c["env"]["VIGIL_TOKEN_FILE"], f"{self.creds}/sensor.token")
        self.assertEqual((self.creds / "sensor.token").read_text(), "secret\n")
        self.assertEqual(os.stat(self.creds / "sensor.token").st_mode & 0o777, 0o400)

    def test_host_specifier_without_env_file_override(self):
        (self.etc / "sensor.env").write_text("VIGIL_DECIDERS=http://a:1\n")
        c = sdunit.command(self.unit, self.maps, host="compute2", creds=self.creds)
        self.assertEqual(c["env"]["VIGIL_NODE"], "compute2")

    def test_missing_required_env_file_is_an_error(self):
        (self.etc / "sensor.env").unlink()
        with self.assertRaisesRegex(sdunit.UnitError, "sensor.env"):
            sdunit.command(self.unit, self.maps, host="h", creds=self.creds)

    def test_unknown_specifier_is_refused(self):
        self.unit.write_text("[Service]\nExecStart=/usr/bin/x %i\n")
        with self.assertRaisesRegex(sdunit.UnitError, "%i"):
            sdunit.command(self.unit, self.maps)

    def test_prefixed_or_several_exec_start_refused(self):
        self.unit.write_text("[Service]\nExecStart=-/usr/bin/x\n")
        with self.assertRaisesRegex(sdunit.UnitError, "prefix"):
            sdunit.command(self.unit, self.maps)
        self.unit.write_text("[Service]\nExecStart=/usr/bin/x\nExecStart=/usr/bin/y\n")
        with self.assertRaisesRegex(sdunit.UnitError, "2 ExecStart"):
            sdunit.command(self.unit, self.maps)

    def test_whole_path_map_beats_prefix_map(self):
        self.unit.write_text(
            "[Service]\nExecStart=/usr/bin/d serve --config /etc/vigil/d.toml\n")
        maps = self.maps + [("/etc/vigil/d.toml", "/tmp/test.toml")]
        c = sdunit.command(self.unit, maps)
        self.assertEqual(c["argv"], ["/R/usr/bin/d", "serve", "--config", "/tmp/test.toml"])

    def test_cli_prints_json(self):
        self.unit.write_text("[Service]\nExecStart=/usr/bin/d --x 100%%\n")
        import io
        import contextlib
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = sdunit.main(["command", "--unit", str(self.unit), "--map", "/usr/=/R/usr/"])
        self.assertEqual(rc, 0)
        self.assertEqual(json.loads(out.getvalue())["argv"], ["/R/usr/bin/d", "--x", "100%"])


if __name__ == "__main__":
    unittest.main()
