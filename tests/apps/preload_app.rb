# frozen_string_literal: true

# A small HTTP app for forkmaster's preload tests with the Ruby helper
# (stdlib only): loads contrib/preload/ruby, records its boot (one line per
# load of this file) in $PRELOAD_APP_BOOTS, then serves `GET /` on the
# inherited listener (fd 3) with one line of key=value fields, as
# tests/apps/preload_app.py does. It sends READY=1 to NOTIFY_SOCKET, stops
# after the request in hand on SIGTERM, and in exec mode (no
# FORKMASTER_PRELOAD_FD) runs as is.

require 'socket'
require_relative '../../contrib/preload/ruby/forkmaster_preload'

BOOT_PID = Process.pid
boots = ENV.fetch('PRELOAD_APP_BOOTS', nil)
File.open(boots, 'a') { |f| f.puts("boot pid=#{BOOT_PID}") } if boots

hooks_run = []
ForkmasterPreload.after_fork { hooks_run << 'after_fork' }

ForkmasterPreload.serve

stopping = false
%w[TERM INT].each { |sig| trap(sig) { stopping = true } }
listener = Socket.for_fd(3)
listener.autoclose = false
if (notify = ENV.fetch('NOTIFY_SOCKET', nil))
  Socket.open(:UNIX, :DGRAM) { |s| s.send('READY=1', 0, Socket.sockaddr_un(notify)) }
end

def answer(conn, hooks_run)
  data = +''
  until data.include?("\r\n\r\n")
    chunk = conn.readpartial(4096)
    data << chunk
  end
  token_file = ENV.fetch('DEMO_TOKEN_FILE', nil)
  token = token_file ? (File.read(token_file).strip rescue '') : ''
  body = "pid=#{Process.pid} worker=#{ENV.fetch('FORKMASTER_WORKER', '-')} " \
         "generation=#{ENV.fetch('FORKMASTER_GENERATION', '-')} boot_pid=#{BOOT_PID} " \
         "token=#{token} hooks=#{hooks_run.empty? ? '-' : hooks_run.join(',')} " \
         "listen_pid=#{ENV.fetch('LISTEN_PID', '-')} " \
         "preload_fd=#{ENV.fetch('FORKMASTER_PRELOAD_FD', '-')} " \
         "notify=#{ENV['NOTIFY_SOCKET'] ? 'yes' : 'no'}\n"
  conn.write("HTTP/1.1 200 OK\r\nContent-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}")
rescue EOFError, SystemCallError
  nil
end

# Woken now and then to see a stop asked for; the request in hand is answered.
until stopping
  next unless IO.select([listener], nil, nil, 0.2)

  begin
    conn, = listener.accept_nonblock
  rescue IO::WaitReadable, Errno::EINTR
    next
  end
  answer(conn, hooks_run)
  conn.close
end
