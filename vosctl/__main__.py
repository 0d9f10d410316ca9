from vosctl.cli import app

app(prog_name="vosctl")
