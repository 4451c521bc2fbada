/**
 * The REST contract of the server extension (`/ds-jobs/`, see docs/panel.md): a Job is the proto
 * `Job` of the DataSphere Jobs API v2 rendered by protobuf's json_format with proto field names
 * and enum names. int64 fields arrive as strings, timestamps as RFC 3339 strings, and fields at
 * their default value are left out: every field is optional here.
 */

export type JobStatus =
  | 'JOB_STATUS_UNSPECIFIED'
  | 'CREATING'
  | 'PREPARING'
  | 'EXECUTING'
  | 'UPLOADING_OUTPUT'
  | 'CANCELLING'
  | 'SUCCESS'
  | 'ERROR'
  | 'CANCELLED';

/** Statuses of a job that has not ended yet. */
export const ACTIVE_STATUSES: readonly JobStatus[] = [
  'CREATING',
  'PREPARING',
  'EXECUTING',
  'UPLOADING_OUTPUT',
  'CANCELLING'
];

/** Statuses of a job that has ended. */
export const FINAL_STATUSES: readonly JobStatus[] = ['SUCCESS', 'ERROR', 'CANCELLED'];

export function isActive(status: JobStatus | undefined): boolean {
  return status !== undefined && ACTIVE_STATUSES.includes(status);
}

export interface FileDesc {
  path?: string;
  var?: string;
}

export interface JobFile {
  desc?: FileDesc;
  sha256?: string;
  size_bytes?: string | number;
  compression_type?: string;
}

export interface FileUploadError {
  output_file_desc?: FileDesc;
  log_file_name?: string;
  description?: string;
  type?: string;
}

export interface JobParameters {
  input_files?: JobFile[];
  output_files?: FileDesc[];
  cmd?: string;
  arguments?: { name?: string; value?: string }[];
  env?: {
    vars?: Record<string, string>;
    docker_image_resource_id?: string;
    docker_image_spec?: { image_url?: string };
    python_env?: {
      conda_yaml?: string;
      local_modules?: JobFile[];
      python_version?: string;
      requirements?: string[];
    };
  };
  cloud_instance_types?: { name?: string }[];
  graceful_shutdown_parameters?: { timeout?: string; signal?: string | number };
}

export interface JobProgress {
  message?: string;
  progress?: string | number;
  create_time?: string;
}

export interface Job {
  id: string;
  name?: string;
  desc?: string;
  status?: JobStatus;
  created_at?: string;
  started_at?: string;
  finished_at?: string;
  status_details?: string;
  created_by_id?: string;
  project_id?: string;
  parent_job_id?: string;
  job_parameters?: JobParameters;
  output_files?: JobFile[];
  log_files?: JobFile[];
  diagnostic_files?: JobFile[];
  file_errors?: FileUploadError[];
  actual_cloud_instance_type?: { name?: string };
  data_expires_at?: string;
  data_cleared?: boolean;
  data_size_bytes?: string | number;
  /** Added by `GET /ds-jobs/jobs/{id}` (not in the proto `Job`): the latest progress. */
  progress?: JobProgress;
  /** Added by `GET /ds-jobs/jobs/{id}` once the job has ended (`JobResult.return_code`). */
  return_code?: string | number;
  result?: { return_code?: string | number };
}

export interface JobPage {
  jobs: Job[];
  next_page_token?: string;
}

/** One event of `GET /ds-jobs/jobs/{id}/logs`. */
export interface LogEvent {
  stream: 'stdout' | 'stderr' | 'system';
  text: string;
}

/** One stored file of a job (`GET /ds-jobs/jobs/{id}/files`). */
export interface StoredFile {
  path: string;
  kind?: string;
  size_bytes?: string | number;
}

/** `GET /ds-jobs/status`. */
export interface ServerStatus {
  reachable?: boolean;
  endpoint?: string;
  message?: string;
}
