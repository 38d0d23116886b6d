import os

from nvlm_deploy.serve import server as srv


def test_pytriton_dist_follows_the_recipe(tmp_path):
    dist = srv._pytriton_dist(tmp_path)
    assert dist.kind == "pytriton" and dist.binary.is_file()
    assert (dist.backend_dir / "python" / "triton_python_backend_stub").is_file()
    assert (dist.backend_dir / "python" / "libtriton_python.so").is_file()
    assert "triton" not in [p.name for p in dist.backend_dir.parents] + [dist.backend_dir.name]
    assert "nvidia_pytriton.libs" in dist.env["LD_LIBRARY_PATH"]
    assert srv._pytriton_dist(tmp_path).backend_dir == dist.backend_dir  # prepared once, then reused


def test_command_binds_localhost_and_env_puts_this_venv_first(tmp_path):
    dist = srv._pytriton_dist(tmp_path)
    cmd = srv.server_command(dist, tmp_path, grpc_port=1234, http_port=1235)
    args = {flag: cmd[i + 1] for i, flag in enumerate(cmd[:-1]) if flag.startswith("--")}
    assert args["--grpc-address"] == args["--http-address"] == "127.0.0.1"
    assert (args["--grpc-port"], args["--http-port"]) == ("1234", "1235")
    assert args["--backend-directory"] == str(dist.backend_dir)
    assert "--disable-auto-complete-config" in cmd
    env = srv.server_env(dist)
    import sys
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_world_size_two_gives_the_mpirun_line(tmp_path):
    dist = srv._pytriton_dist(tmp_path)
    cmd = srv.launch_command(tmp_path, grpc_port=1, http_port=2, world_size=2, dist=dist)
    assert cmd[0] == "mpirun" and cmd.count(str(dist.binary)) == 2


def test_free_port_is_bindable():
    import socket

    port = srv.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_free_ports_are_distinct_and_avoid_the_taken_ones():
    taken = set(srv.free_ports(3))
    ports = srv.free_ports(20, taken=taken)
    assert len(set(ports)) == 20 and not taken & set(ports)
