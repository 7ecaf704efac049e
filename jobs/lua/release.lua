-- A run hands its job back to the queue (its worker is shutting down), with a new message.
-- -> 'queued' when handed back, 'cancel' when the cancel flag is set (the caller finishes it canceled),
-- else ''
local _, id, token, now, queue_list, message = unpack(ARGV)
local job = job_key(id)
if not owned_by(job, token) then return '' end
if redis.call('EXISTS', job .. ':cancel') == 1 then return 'cancel' end
back_to_queue(id, now, queue_list, message)
return 'queued'
