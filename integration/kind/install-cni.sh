#!/bin/sh
# Install Tortie's CNI executables and network configuration on the host (the init container
# of the tortie-node DaemonSet runs this with the host's / mounted at $HOST_ROOT).
#
# The CNI executable is a stdlib-only Python client (cni/plugin.py) started with `python -I -S`.
# A kind node (or any host) may have no Python, so this copies the image's interpreter and
# standard library (without site-packages) to /opt/tortie/python on the host, and installs
# /opt/cni/bin/tortie and /opt/cni/bin/tortie-ipam as launchers (cni/launcher.py) that run it.
# The conflist is written last, atomically: kubelet reports the node Ready only once it
# exists, and by then the executables are in place.
set -eu

HOST_ROOT=${HOST_ROOT:-/host}
PREFIX=/opt/tortie                  # on the host
CNI_BIN=${CNI_BIN:-/opt/cni/bin}
CNI_CONF=${CNI_CONF:-/etc/cni/net.d}
CONFLIST=${CONFLIST:-/opt/tortie/conf/10-tortie.conflist}

py_version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
py_prefix=$(python3 -c 'import sys; print(sys.base_prefix)')
plugin=$(python3 -c 'import cni.plugin; print(cni.plugin.__file__)')
stage="$HOST_ROOT$PREFIX.new.$$"

rm -rf "$stage"
mkdir -p "$stage/python/bin" "$stage/python/lib" "$stage/cni"
cp "$py_prefix/bin/python$py_version" "$stage/python/bin/python$py_version.bin"
cp -P "$py_prefix"/lib/libpython"$py_version"*.so* "$stage/python/lib/" 2>/dev/null || true
tar -C "$py_prefix/lib" --exclude="python$py_version/site-packages" \
    --exclude="__pycache__" --exclude="python$py_version/test" \
    --exclude="python$py_version/ensurepip" --exclude="python$py_version/idlelib" \
    --exclude="python$py_version/tkinter" --exclude="python$py_version/turtledemo" \
    -cf - "python$py_version" | tar -C "$stage/python/lib" -xf -
# the interpreter finds its standard library from its own path; the wrapper only adds the
# shared libpython
cat > "$stage/python/bin/python3" <<WRAPPER
#!/bin/sh
LD_LIBRARY_PATH=$PREFIX/python/lib exec $PREFIX/python/bin/python$py_version.bin "\$@"
WRAPPER
chmod 0755 "$stage/python/bin/python3"
cp "$plugin" "$stage/cni/plugin.py"

rm -rf "$HOST_ROOT$PREFIX.old"
if [ -d "$HOST_ROOT$PREFIX" ]; then mv "$HOST_ROOT$PREFIX" "$HOST_ROOT$PREFIX.old"; fi
mv "$stage" "$HOST_ROOT$PREFIX"
rm -rf "$HOST_ROOT$PREFIX.old"

mkdir -p "$HOST_ROOT$CNI_BIN" "$HOST_ROOT$CNI_CONF"
python3 -c 'import sys; from pathlib import Path; from cni.launcher import install
install(sys.argv[1], sys.argv[2], Path(sys.argv[3]))' \
    "$HOST_ROOT$CNI_BIN" "$PREFIX/python/bin/python3" "$PREFIX/cni/plugin.py"
# the launcher must work with the host's paths and libraries: try it (VERSION needs no daemon)
if [ "${VERIFY_LAUNCHER:-1}" = 1 ]; then
    echo '{"cniVersion":"1.1.0"}' | CNI_COMMAND=VERSION chroot "$HOST_ROOT" "$CNI_BIN/tortie" \
        >/dev/null
fi

tmp="$HOST_ROOT$CNI_CONF/.10-tortie.conflist.tmp"
cp "$CONFLIST" "$tmp"
mv "$tmp" "$HOST_ROOT$CNI_CONF/10-tortie.conflist"
echo "installed: $CNI_BIN/tortie $CNI_BIN/tortie-ipam $CNI_CONF/10-tortie.conflist"
